//! sqlx through a pgbay transaction pool: the driver matrix's second Rust program
//! (`tests/test_drivers.py`, issue 20). The connection settings come from the environment
//! (`PGB_*`; the password never in argv); TLS is verify-full against pgbay's CA. sqlx prepares
//! every query it is given with arguments as a named statement (`sqlx_s_N`) and keeps them per
//! connection in a cache, here of two entries (`statement_cache_capacity(2)`), so that ten
//! distinct queries evict statements with a protocol-level Close: the path that breaks sqlx
//! behind transaction poolers that share server statements between clients. sqlx has no
//! cancel request, so this program has no cancel step.
//!
//! Exits 1 with the failed step, the error and its SQLSTATE on stderr.

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions, PgSslMode};
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::types::JsonValue;
use sqlx::{Connection, Row};

mod driver_common;
use driver_common::{copy_out_sql, copy_rows, env, run_steps, step, want, Res};

const CLIENTS: u32 = 10;

fn options() -> Res<PgConnectOptions> {
    Ok(PgConnectOptions::new()
        .host(&env("PGB_HOST")?)
        .port(env("PGB_PORT")?.parse()?)
        .database(&env("PGB_DB")?)
        .username(&env("PGB_USER")?)
        .password(&env("PGB_PASSWORD")?)
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(env("PGB_CA")?)
        .statement_cache_capacity(2))
}

/// The SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

async fn run() -> Res<()> {
    let table = env("PGB_TABLE")?;

    step("connect over TLS verify-full");
    let mut conn = PgConnection::connect_with(&options()?).await?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (id int, note text, worker int); TRUNCATE {table}"
    ))
    .execute(&mut conn)
    .await?;

    step("parameters of common types");
    let ts: DateTime<Utc> = DateTime::from_timestamp_micros(1_796_283_901_123_456).ok_or("ts")?;
    let raw: Vec<u8> = (0..=255u8).collect();
    let json: JsonValue = serde_json::from_str(r#"{"a": [1, 2, {"b": null}], "c": "d"}"#)?;
    let arr: Vec<Option<i32>> = vec![Some(1), Some(2), Some(3), None, Some(5)];
    for _ in 0..3 {
        let row = sqlx::query(
            "SELECT $1::int, $2::text, $3::text::numeric::text, $4::bool, $5::timestamptz, \
             $6::bytea, $7::json, $8::int[]",
        )
        .bind(42i32)
        .bind("héllo, 'pool' \\ \"x\"")
        .bind("12345.678901")
        .bind(true)
        .bind(ts)
        .bind(&raw)
        .bind(&json)
        .bind(&arr)
        .fetch_one(&mut conn)
        .await?;
        want(row.try_get::<i32, _>(0)? == 42, "int")?;
        want(
            row.try_get::<String, _>(1)? == "héllo, 'pool' \\ \"x\"",
            "text",
        )?;
        want(row.try_get::<String, _>(2)? == "12345.678901", "numeric")?;
        want(row.try_get::<bool, _>(3)?, "bool")?;
        want(row.try_get::<DateTime<Utc>, _>(4)? == ts, "timestamptz")?;
        want(row.try_get::<Vec<u8>, _>(5)? == raw, "bytea")?;
        let got: JsonValue = row.try_get(6)?;
        want(got == json, format!("json {got}"))?;
        want(row.try_get::<Vec<Option<i32>>, _>(7)? == arr, "int[]")?;
    }

    step("statements prepared and evicted (ten distinct, three rounds, a cache of two)");
    for round in 0..3i32 {
        for q in 0..10i32 {
            let v: i32 = sqlx::query_scalar(&format!("SELECT $1::int + {q}"))
                .bind(round)
                .fetch_one(&mut conn)
                .await?;
            want(v == round + q, format!("query {q}: {v}"))?;
        }
    }

    step("transaction with a savepoint rolled back");
    {
        let mut tx = conn.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {table} (id, note) VALUES ($1, 'kept')"
        ))
        .bind(1i32)
        .execute(&mut *tx)
        .await?;
        let mut sp = tx.begin().await?; // SAVEPOINT
        sqlx::query(&format!(
            "INSERT INTO {table} (id, note) VALUES ($1, 'gone')"
        ))
        .bind(2i32)
        .execute(&mut *sp)
        .await?;
        let err = sqlx::query("SELECT 1/0").execute(&mut *sp).await.err();
        want(
            err.as_ref().and_then(sqlstate).as_deref() == Some("22012"),
            format!("1/0: {err:?}"),
        )?;
        sp.rollback().await?;
        tx.commit().await?;
    }
    let ids: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT array_agg(id ORDER BY id) FROM {table}"))
            .fetch_one(&mut conn)
            .await?;
    want(ids == vec![1], format!("ids {ids:?}"))?;

    step("COPY in and out");
    let data = copy_rows();
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} (id, note) FROM STDIN"))
        .await?;
    copy.send(data.as_bytes()).await?;
    let n = copy.finish().await?;
    want(n == 100, format!("copied {n}"))?;
    let out: Vec<_> = conn
        .copy_out_raw(&copy_out_sql(&table))
        .await?
        .try_collect()
        .await?;
    want(out.concat() == data.as_bytes(), "COPY out")?;
    conn.close().await?;

    step("10 concurrent clients (PgPool, one transaction each time)");
    let pool = PgPoolOptions::new()
        .max_connections(CLIENTS)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options()?)
        .await?;
    let mut tasks = Vec::new();
    for w in 0..CLIENTS as i32 {
        let pool = pool.clone();
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..12i32 {
                let mut tx = pool.begin().await?;
                sqlx::query(&format!(
                    "INSERT INTO {table} (id, note, worker) VALUES ($1, 'w', $2)"
                ))
                .bind(1000 + i)
                .bind(w)
                .execute(&mut *tx)
                .await?;
                let v: i32 = sqlx::query_scalar("SELECT $1::int + 1")
                    .bind(i)
                    .fetch_one(&mut *tx)
                    .await?;
                want(v == i + 1, format!("{i} + 1 = {v}"))?;
                tx.commit().await?;
            }
            Ok::<(), driver_common::Err>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE note = 'w'"))
        .fetch_one(&pool)
        .await?;
    want(n == i64::from(CLIENTS) * 12, format!("rows {n}"))?;

    step("LISTEN/NOTIFY (PgListener)");
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen("drivers_sqlx").await?;
    sqlx::query("SELECT pg_notify('drivers_sqlx', $1)")
        .bind("hello from sqlx")
        .execute(&pool)
        .await?;
    let note = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .map_err(|_| "no notification within 10 s")??;
    want(
        note.payload() == "hello from sqlx",
        format!("payload {}", note.payload()),
    )?;
    drop(listener);
    pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() {
    run_steps(run(), |e| {
        e.downcast_ref::<sqlx::Error>().and_then(sqlstate)
    })
    .await;
}
