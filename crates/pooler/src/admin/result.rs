//! A console answer: columns with their types, rows of text values, the command tag. Encoded
//! as RowDescription / DataRow / CommandComplete in the text format, which is all the console
//! speaks (like PgBouncer's).

use bytes::{BufMut, BytesMut};

use crate::net::messages::{begin, finish, put_cstr, tag};

/// Column types the console uses (PostgreSQL type OIDs, as PgBouncer declares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Text = 25,
    Int4 = 23,
    /// PgBouncer's 64-bit counters (SHOW STATS*).
    Numeric = 1700,
}

impl Type {
    fn len(self) -> i16 {
        match self {
            Type::Text | Type::Numeric => -1,
            Type::Int4 => 4,
        }
    }
}

/// A column: name and type.
pub type Column = (&'static str, Type);

/// What a command answers.
#[derive(Debug, Default)]
pub struct Answer {
    /// `None`: the command returns no rows (PAUSE, RESUME...), answered with NoData on Describe.
    pub columns: Option<&'static [Column]>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
    /// NOTICE messages sent before the rows (SHOW HELP).
    pub notices: Vec<String>,
}

impl Answer {
    pub fn rows(columns: &'static [Column], rows: Vec<Vec<Option<String>>>) -> Answer {
        Answer {
            columns: Some(columns),
            rows,
            tag: "SHOW".into(),
            notices: Vec::new(),
        }
    }

    pub fn done(tag: &str) -> Answer {
        Answer {
            tag: tag.into(),
            ..Answer::default()
        }
    }
}

/// A row builder: `row![a, b, ...]` of anything `Display`; `None` is SQL NULL.
pub fn v(x: impl std::fmt::Display) -> Option<String> {
    Some(x.to_string())
}

pub fn row_description(out: &mut BytesMut, columns: &[Column]) {
    let at = begin(out, tag::ROW_DESCRIPTION);
    out.put_i16(columns.len() as i16);
    for (name, ty) in columns {
        put_cstr(out, name.as_bytes());
        out.put_i32(0); // table oid
        out.put_i16(0); // attribute number
        out.put_i32(*ty as i32);
        out.put_i16(ty.len());
        out.put_i32(-1); // type modifier
        out.put_i16(0); // text format
    }
    finish(out, at);
}

pub fn data_row(out: &mut BytesMut, row: &[Option<String>]) {
    let at = begin(out, b'D');
    out.put_i16(row.len() as i16);
    for value in row {
        match value {
            Some(s) => {
                out.put_i32(s.len() as i32);
                out.put_slice(s.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    finish(out, at);
}

pub fn command_complete(out: &mut BytesMut, tag_text: &str) {
    crate::net::messages::status::command_complete(out, tag_text.as_bytes());
}

pub fn notice(out: &mut BytesMut, message: &str) {
    let at = begin(out, b'N');
    for (field, value) in [
        (b'S', "NOTICE"),
        (b'V', "NOTICE"),
        (b'C', "00000"),
        (b'M', message),
    ] {
        out.put_u8(field);
        put_cstr(out, value.as_bytes());
    }
    out.put_u8(0);
    finish(out, at);
}

/// The rows and completion of an answer (its RowDescription is sent separately: the extended
/// protocol sends it on Describe only).
pub fn write_rows(out: &mut BytesMut, answer: &Answer) {
    for n in &answer.notices {
        notice(out, n);
    }
    for row in &answer.rows {
        data_row(out, row);
    }
    let tag_text = if answer.columns.is_some() && answer.tag == "SELECT" {
        format!("SELECT {}", answer.rows.len())
    } else {
        answer.tag.clone()
    };
    command_complete(out, &tag_text);
}
