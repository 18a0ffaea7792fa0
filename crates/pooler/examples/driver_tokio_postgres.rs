//! tokio-postgres with deadpool-postgres through a pgbay transaction pool: the Rust program of
//! the driver matrix (`tests/test_drivers.py`, issue 20). The connection settings come from the
//! environment (`PGB_*`; the password never in argv); TLS is verify-full against pgbay's CA
//! (rustls: the chain and the host name). tokio-postgres prepares every parameterised query
//! (named statements, closed with a protocol-level Close when the `Statement` is dropped:
//! its eviction path), deadpool's `prepare_cached` keeps them per connection.
//!
//! Exits 1 with the failed step, the error and its SQLSTATE on stderr.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

mod driver_common;
use driver_common::{copy_out_sql, copy_rows, env, run_steps, step, want, Res};

const CLIENTS: usize = 10;

fn config() -> Res<Config> {
    let mut c = Config::new();
    c.host(env("PGB_HOST")?)
        .port(env("PGB_PORT")?.parse()?)
        .dbname(env("PGB_DB")?)
        .user(env("PGB_USER")?)
        .password(env("PGB_PASSWORD")?)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    Ok(c)
}

fn tls() -> Res<MakeRustlsConnect> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(env("PGB_CA")?)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(cfg))
}

/// A connection whose asynchronous messages (notifications) go to the returned channel.
async fn connect(
    tls: &MakeRustlsConnect,
) -> Res<(
    Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
)> {
    let (client, mut conn) = config()?.connect(tls.clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send(n);
            }
        }
    });
    Ok((client, rx))
}

async fn run() -> Res<()> {
    let table = env("PGB_TABLE")?;
    let tls = tls()?;

    step("connect over TLS verify-full");
    let (client, mut notes) = connect(&tls).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (id int, note text, worker int); TRUNCATE {table}"
        ))
        .await?;

    step("parameters of common types");
    let ts = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_283_901_123_456);
    let raw: Vec<u8> = (0..=255u8).collect();
    let arr: Vec<Option<i32>> = vec![Some(1), Some(2), Some(3), None, Some(5)];
    let st = client
        .prepare(
            "SELECT $1::int, $2::text, $3::text::numeric::text, $4::bool, $5::timestamptz, \
             $6::bytea, $7::text::json::text, $8::int[]",
        )
        .await?;
    for _ in 0..3 {
        let row = client
            .query_one(
                &st,
                &[
                    &42i32,
                    &"héllo, 'pool' \\ \"x\"",
                    &"12345.678901",
                    &true,
                    &ts,
                    &raw,
                    &r#"{"a": [1, 2, {"b": null}], "c": "d"}"#,
                    &arr,
                ],
            )
            .await?;
        want(row.get::<_, i32>(0) == 42, "int")?;
        want(row.get::<_, &str>(1) == "héllo, 'pool' \\ \"x\"", "text")?;
        want(row.get::<_, &str>(2) == "12345.678901", "numeric")?;
        want(row.get::<_, bool>(3), "bool")?;
        want(row.get::<_, SystemTime>(4) == ts, "timestamptz")?;
        want(row.get::<_, Vec<u8>>(5) == raw, "bytea")?;
        want(
            row.get::<_, &str>(6) == r#"{"a": [1, 2, {"b": null}], "c": "d"}"#,
            format!("json {}", row.get::<_, &str>(6)),
        )?;
        want(row.get::<_, Vec<Option<i32>>>(7) == arr, "int[]")?;
    }
    drop(st);

    step("statements prepared and closed (ten distinct, three rounds)");
    for round in 0..3i32 {
        for q in 0..10i32 {
            let st = client.prepare(&format!("SELECT $1::int + {q}")).await?;
            let v: i32 = client.query_one(&st, &[&round]).await?.get(0);
            want(v == round + q, format!("query {q}: {v}"))?;
            drop(st); // tokio-postgres closes it (protocol-level Close)
        }
    }

    step("transaction with a savepoint rolled back");
    let mut client = client;
    {
        let mut tx = client.transaction().await?;
        tx.execute(
            &format!("INSERT INTO {table} (id, note) VALUES (1, 'kept')"),
            &[],
        )
        .await?;
        let sp = tx.savepoint("s1").await?;
        sp.execute(
            &format!("INSERT INTO {table} (id, note) VALUES (2, 'gone')"),
            &[],
        )
        .await?;
        let err = sp.execute("SELECT 1/0", &[]).await.err();
        want(
            err.as_ref().and_then(|e| e.code()) == Some(&SqlState::DIVISION_BY_ZERO),
            format!("1/0: {err:?}"),
        )?;
        sp.rollback().await?;
        tx.commit().await?;
    }
    let ids: Vec<i32> = client
        .query_one(
            &format!("SELECT array_agg(id ORDER BY id) FROM {table}"),
            &[],
        )
        .await?
        .get(0);
    want(ids == vec![1], format!("ids {ids:?}"))?;

    step("COPY in and out");
    let data = copy_rows();
    let sink = client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} (id, note) FROM STDIN"))
        .await?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data.clone())).await?;
    let n = sink.finish().await?;
    want(n == 100, format!("copied {n}"))?;
    let out: Vec<bytes::Bytes> = client
        .copy_out(&copy_out_sql(&table))
        .await?
        .try_collect()
        .await?;
    want(out.concat() == data.as_bytes(), "COPY out")?;

    step("cancel a pg_sleep");
    let (watcher, _) = connect(&tls).await?;
    let token = client.cancel_token();
    let sleeper = async {
        client
            .simple_query("SELECT pg_sleep(60) /* drivers-cancel */")
            .await
    };
    let canceller = async {
        for _ in 0..400 {
            let n: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query \
                     LIKE '%drivers-cancel%' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await?
                .get(0);
            if n == 1 {
                return token.cancel_query(tls.clone()).await.map_err(Into::into);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err::<(), driver_common::Err>("the pg_sleep did not start".into())
    };
    let (slept, cancelled) = tokio::join!(sleeper, canceller);
    cancelled?;
    let err = slept.err();
    want(
        err.as_ref().and_then(|e| e.code()) == Some(&SqlState::QUERY_CANCELED),
        format!("cancelled pg_sleep: {err:?}"),
    )?;

    step("LISTEN/NOTIFY");
    client.batch_execute("LISTEN drivers_rs").await?;
    watcher
        .batch_execute("NOTIFY drivers_rs, 'hello from tokio-postgres'")
        .await?;
    let note = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .map_err(|_| "no notification within 10 s")?
        .ok_or("connection closed")?;
    want(
        note.payload() == "hello from tokio-postgres",
        format!("payload {}", note.payload()),
    )?;
    drop(client);
    drop(watcher);

    step("10 concurrent clients (deadpool-postgres, prepare_cached)");
    let mgr = Manager::from_config(
        config()?,
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr).max_size(CLIENTS).build()?;
    let mut tasks = Vec::new();
    for w in 0..CLIENTS as i32 {
        let pool = pool.clone();
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..12i32 {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let ins = tx
                    .prepare_cached(&format!(
                        "INSERT INTO {table} (id, note, worker) VALUES ($1, 'w', $2)"
                    ))
                    .await?;
                tx.execute(&ins, &[&(1000 + i), &w]).await?;
                let inc = tx.prepare_cached("SELECT $1::int + 1").await?;
                let v: i32 = tx.query_one(&inc, &[&i]).await?.get(0);
                want(v == i + 1, format!("{i} + 1 = {v}"))?;
                tx.commit().await?;
            }
            Ok::<(), driver_common::Err>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let c = pool.get().await?;
    let n: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE note = 'w'"),
            &[],
        )
        .await?
        .get(0);
    want(n == (CLIENTS * 12) as i64, format!("rows {n}"))?;
    Ok(())
}

#[tokio::main]
async fn main() {
    run_steps(run(), |e| {
        e.downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .map(|c| c.code().to_owned())
    })
    .await;
}
