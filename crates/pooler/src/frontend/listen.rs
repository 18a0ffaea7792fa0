//! An idle transaction-mode client's LISTEN/UNLISTEN, answered without a server connection:
//! the pool's listener (`backend::listen`) subscribes it, and the answer waits until the
//! listener's server confirmed, so that a NOTIFY sent after LISTEN returned is heard (as on a
//! direct connection). A LISTEN that reaches the relay instead (in a transaction block, or
//! pipelined behind other messages) is answered at once (`relay::session_state`).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::client::Client;
use super::relay::block::statement_text;
use super::relay::session_state::{parse_listen, ListenCmd};
use crate::backend::listen::{Cmd, Subscriber};
use crate::errors;
use crate::net::messages::error::Severity;
use crate::net::messages::tag::{self, txn};
use crate::net::messages::{header, status, HEADER};

/// How long a LISTEN waits for the listener's server.
const CONFIRM: Duration = Duration::from_secs(5);

/// Serves the LISTEN/UNLISTEN Queries at the head of what an idle client sent. Ok(true) when
/// nothing else is left to serve; Err when the client is gone.
pub async fn serve(client: &mut Client) -> Result<bool, ()> {
    let mut out = BytesMut::new();
    while let Some((kind, len)) = header(&client.pending) {
        if kind != tag::QUERY || client.pending.len() < len {
            break;
        }
        let first = client.pending.get(HEADER..).and_then(|b| b.first());
        if !first.is_some_and(|b| matches!(b | 0x20, b'l' | b'u')) {
            break;
        }
        let Some(cmd) = parse_listen(statement_text(kind, &client.pending[..len])) else {
            break;
        };
        client.pending.advance(len);
        let hub = client.pool.listen_hub();
        let listen = matches!(cmd, ListenCmd::Listen(_));
        let mut confirmed = true;
        match cmd {
            ListenCmd::Listen(channel) => {
                let sub = client.notify.get_or_insert_with(|| Subscriber::new(hub));
                let (done, wait) = oneshot::channel();
                hub.send(Cmd::Listen {
                    channel,
                    client: sub.id,
                    sink: sub.sink.clone(),
                    done: Some(done),
                });
                confirmed = matches!(tokio::time::timeout(CONFIRM, wait).await, Ok(Ok(())));
            }
            ListenCmd::Unlisten(channel) => {
                if let Some(sub) = &client.notify {
                    hub.send(Cmd::Unlisten {
                        channel,
                        client: sub.id,
                    });
                }
            }
            ListenCmd::UnlistenAll => {
                if let Some(sub) = &client.notify {
                    hub.send(Cmd::UnlistenAll { client: sub.id });
                }
            }
        }
        if confirmed {
            status::command_complete(&mut out, if listen { b"LISTEN" } else { b"UNLISTEN" });
        } else {
            // Subscribed all the same: the listener keeps trying and delivers once it is back.
            errors::listen_unavailable(&client.pool.name).write(&mut out, Severity::Error);
        }
        status::ready_for_query(&mut out, txn::IDLE);
    }
    if out.is_empty() {
        return Ok(false);
    }
    if client.stream.write_all(&out).await.is_err() || client.stream.flush().await.is_err() {
        return Err(());
    }
    Ok(client.pending.is_empty())
}
