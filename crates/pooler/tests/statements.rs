//! Transaction mode: SQL `DEALLOCATE` and `DISCARD ALL` act on the client's own protocol-level
//! statements and are answered as PostgreSQL would (issue 20). One pool of size 1 serves every
//! client in turn, so they all share one server connection and its statements.

mod support;

use pgbay_pooler::PoolMode;
use support::*;

async fn one(c: &tokio_postgres::Client, st: &tokio_postgres::Statement) -> i32 {
    c.query_one(st, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_act_on_own_statements() {
    let pg = shared().await;
    let (pooler, addr) = start(service(
        "dealloc",
        pg.port,
        vec![pool("p1", PoolMode::Transaction, 1)],
    ))
    .await;
    let a = connect(addr, "p1").await.unwrap();
    let b = connect(addr, "p1").await.unwrap();
    // Same text: one shared server statement behind both clients' names.
    let sa = a.prepare("SELECT 41 + 1").await.unwrap();
    let sb = b.prepare("SELECT 41 + 1").await.unwrap();
    assert_eq!(one(&a, &sa).await, 42);
    assert_eq!(one(&b, &sb).await, 42);

    // DEALLOCATE ALL (any case, comments, the PREPARE form) drops a's names only.
    let msgs = a
        .simple_query("  deallocate /* c */ PREPARE all ;")
        .await
        .unwrap();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(0))),
        "{msgs:?}"
    );
    let e = must_fail(
        a.query_one(&sa, &[]).await,
        "a's statement after DEALLOCATE ALL",
    );
    assert_eq!(sqlstate(&e), "26000", "{}", describe(&e));
    assert_eq!(one(&b, &sb).await, 42, "b's statement is untouched");

    // An unknown name: 26000 with PostgreSQL's message; idle, the client goes on.
    let e = must_fail(a.batch_execute("DEALLOCATE nosuch").await, "unknown name");
    assert_eq!(sqlstate(&e), "26000", "{}", describe(&e));
    assert!(
        describe(&e).contains("prepared statement \"nosuch\" does not exist"),
        "{}",
        describe(&e)
    );
    let e = must_fail(a.batch_execute("DEALLOCATE \"NoSuch\"").await, "quoted");
    assert!(describe(&e).contains("\"NoSuch\""), "{}", describe(&e));
    // In a block the error fails the block, as on a direct connection.
    a.batch_execute("BEGIN").await.unwrap();
    let e = must_fail(a.batch_execute("DEALLOCATE nosuch").await, "in a block");
    assert_eq!(sqlstate(&e), "26000", "{}", describe(&e));
    let e = must_fail(a.batch_execute("SELECT 1").await, "failed block");
    assert_eq!(sqlstate(&e), "25P02", "{}", describe(&e));
    // In a failed block DEALLOCATE is refused by the server too.
    let e = must_fail(
        a.batch_execute("DEALLOCATE ALL").await,
        "DEALLOCATE ALL failed block",
    );
    assert_eq!(sqlstate(&e), "25P02", "{}", describe(&e));
    a.batch_execute("ROLLBACK").await.unwrap();
    // DEALLOCATE ALL inside a healthy block succeeds and leaves the block open.
    let sa = a.prepare("SELECT 7").await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    a.batch_execute("DEALLOCATE ALL").await.unwrap();
    let v: i32 = a.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
    a.batch_execute("COMMIT").await.unwrap();
    let e = must_fail(
        a.query_one(&sa, &[]).await,
        "after DEALLOCATE ALL in a block",
    );
    assert_eq!(sqlstate(&e), "26000", "{}", describe(&e));

    // DISCARD ALL drops the client's names and its settings, not b's.
    let sa = a.prepare("SELECT 8").await.unwrap();
    a.batch_execute("SET work_mem = '7MB'").await.unwrap();
    let default_mem: String = b.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    let st = a.prepare("SHOW work_mem").await.unwrap();
    let mem: String = a.query_one(&st, &[]).await.unwrap().get(0);
    assert_eq!(mem, "7MB");
    a.batch_execute("DISCARD ALL").await.unwrap();
    let e = must_fail(a.query_one(&sa, &[]).await, "after DISCARD ALL");
    assert_eq!(sqlstate(&e), "26000", "{}", describe(&e));
    let mem: String = a
        .simple_query("SHOW work_mem")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    assert_eq!(mem, default_mem, "DISCARD ALL resets the client's settings");
    assert_eq!(
        one(&b, &sb).await,
        42,
        "b's statement survives a's DISCARD ALL"
    );

    // Other SQL-level forms stay refused; so does DEALLOCATE through Parse.
    let e = must_fail(a.batch_execute("DEALLOCATE a; SELECT 1").await, "not alone");
    assert_eq!(sqlstate(&e), "0A000", "{}", describe(&e));
    let e = must_fail(a.execute("DEALLOCATE ALL", &[]).await, "extended");
    assert_eq!(sqlstate(&e), "0A000", "{}", describe(&e));
    let v: i32 = a.query_one("SELECT 9", &[]).await.unwrap().get(0);
    assert_eq!(v, 9);
    pooler.shutdown().await;
}
