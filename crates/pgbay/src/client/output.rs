//! How the CLI prints: aligned tables and `KEY  value` blocks for people, the API's JSON for
//! scripts, and a spinner on stderr while it waits, only when stderr is a terminal (a script's
//! captured output stays clean).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

/// Prints `v` as indented JSON.
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Renders rows under headers in columns two spaces apart (the last column unpadded).
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 < widths.len() {
                out.push_str(&format!("{cell:<w$}  "));
            } else {
                out.push_str(cell);
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Prints a table (see [`render_table`]).
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

/// Prints `KEY  value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        println!("{k:<w$}  {v}");
    }
}

/// A JSON field as table text: strings bare, absent as `-`.
pub fn cell(v: &Value, field: &str) -> String {
    match v.get(field) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A spinner with a message on stderr while the CLI waits; inert when stderr is not a terminal.
pub struct Spinner {
    state: Option<Running>,
}

/// A spinning spinner: its stop flag, its message, its thread.
type Running = (Arc<AtomicBool>, Arc<Mutex<String>>, JoinHandle<()>);

impl Spinner {
    /// Starts spinning with `message` (if stderr is a terminal).
    pub fn start(message: &str) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner { state: None };
        }
        let stop = Arc::new(AtomicBool::new(false));
        let text = Arc::new(Mutex::new(message.to_string()));
        let (s, t) = (stop.clone(), text.clone());
        let handle = std::thread::spawn(move || {
            const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let mut i = 0;
            while !s.load(Ordering::Relaxed) {
                let msg = t.lock().map(|m| m.clone()).unwrap_or_default();
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{} {msg}", FRAMES[i % FRAMES.len()]);
                let _ = err.flush();
                drop(err);
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        });
        Spinner {
            state: Some((stop, text, handle)),
        }
    }

    /// Changes the message.
    pub fn set(&self, message: &str) {
        if let Some((_, text, _)) = &self.state {
            if let Ok(mut t) = text.lock() {
                *t = message.to_string();
            }
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some((stop, _, handle)) = self.state.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = render_table(
            &["NAME", "STATE"],
            &[
                vec!["a-long-name".into(), "running".into()],
                vec!["b".into(), "rebuilding".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME         STATE\na-long-name  running\nb            rebuilding\n"
        );
    }
}
