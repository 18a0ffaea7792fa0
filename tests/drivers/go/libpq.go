//go:build libpq

// lib/pq (Debian golang-github-lib-pq-dev) with Go's database/sql through a pgbay transaction
// pool. Run by tests/test_drivers.py (built with GO111MODULE=off against /usr/share/gocode).
// A query with arguments is an unnamed Parse/Bind/Execute; db.Prepare makes a named statement
// that stmt.Close closes with a protocol-level Close (the eviction path of Go code that
// prepares statements and closes them); database/sql keeps its own pool of connections.
// lib/pq has COPY FROM STDIN (pq.CopyIn) but no COPY TO STDOUT, so this program copies in only.
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/lib/pq"
)

func sqlstate(err error) string {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return string(pqErr.Code)
	}
	return ""
}

// The password is read by lib/pq from PGPASSWORD (set below), not from the string nor argv.
func dsn() string {
	return fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=verify-full sslrootcert=%s "+
		"connect_timeout=10", os.Getenv("PGB_HOST"), os.Getenv("PGB_PORT"),
		os.Getenv("PGB_DB"), os.Getenv("PGB_USER"), os.Getenv("PGB_CA"))
}

func main() {
	check(os.Setenv("PGPASSWORD", os.Getenv("PGB_PASSWORD")))
	ctx, stop := context.WithTimeout(context.Background(), 150*time.Second)
	defer stop()

	current = "connect over TLS verify-full"
	db, err := sql.Open("postgres", dsn())
	check(err)
	db.SetMaxOpenConns(clients)
	conn, err := db.Conn(ctx)
	check(err)
	_, err = conn.ExecContext(ctx, fmt.Sprintf(
		"CREATE TABLE IF NOT EXISTS %s (id int, note text, worker int); TRUNCATE %s", table, table))
	check(err)

	current = "parameters of common types"
	ts := time.UnixMicro(1_796_283_901_123_456).UTC()
	raw := make([]byte, 256)
	for i := range raw {
		raw[i] = byte(i)
	}
	text := "héllo, 'pool' \\ \"x\""
	jsonText := `{"a": [1, 2, {"b": null}], "c": "d"}`
	arr := []sql.NullInt64{{Int64: 1, Valid: true}, {Int64: 2, Valid: true}, {Int64: 3, Valid: true},
		{}, {Int64: 5, Valid: true}}
	for i := 0; i < 3; i++ {
		var (
			gotInt  int
			gotText string
			gotNum  string
			gotBool bool
			gotTs   time.Time
			gotRaw  []byte
			gotJSON string
			gotArr  []sql.NullInt64
		)
		check(conn.QueryRowContext(ctx,
			"SELECT $1::int, $2::text, $3::text::numeric::text, $4::bool, $5::timestamptz, "+
				"$6::bytea, $7::text::json::text, $8::int[]",
			42, text, "12345.678901", true, ts, raw, jsonText, pq.Array(arr)).Scan(
			&gotInt, &gotText, &gotNum, &gotBool, &gotTs, &gotRaw, &gotJSON, pq.Array(&gotArr)))
		want(gotInt == 42, "int %d", gotInt)
		want(gotText == text, "text %q", gotText)
		want(gotNum == "12345.678901", "numeric %s", gotNum)
		want(gotBool, "bool")
		want(gotTs.Equal(ts), "timestamptz %v", gotTs)
		want(reflect.DeepEqual(gotRaw, raw), "bytea")
		want(gotJSON == jsonText, "json %s", gotJSON)
		want(reflect.DeepEqual(gotArr, arr), "int[] %v", gotArr)
	}

	current = "statements prepared and closed (ten distinct, three rounds)"
	for round := 0; round < 3; round++ {
		for q := 0; q < 10; q++ {
			stmt, err := conn.PrepareContext(ctx, fmt.Sprintf("SELECT $1::int + %d", q))
			check(err)
			var v int
			check(stmt.QueryRowContext(ctx, round).Scan(&v))
			want(v == round+q, "query %d: %d", q, v)
			check(stmt.Close()) // a protocol-level Close of the named statement
		}
	}

	current = "transaction with a savepoint rolled back"
	tx, err := conn.BeginTx(ctx, nil)
	check(err)
	_, err = tx.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s (id, note) VALUES ($1, 'kept')", table), 1)
	check(err)
	_, err = tx.ExecContext(ctx, "SAVEPOINT s1")
	check(err)
	_, err = tx.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s (id, note) VALUES ($1, 'gone')", table), 2)
	check(err)
	_, err = tx.ExecContext(ctx, "SELECT 1/0")
	want(sqlstate(err) == "22012", "1/0: %v", err)
	_, err = tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT s1")
	check(err)
	check(tx.Commit())
	var ids []int64
	check(conn.QueryRowContext(ctx, fmt.Sprintf("SELECT array_agg(id ORDER BY id) FROM %s", table)).
		Scan(pq.Array(&ids)))
	want(reflect.DeepEqual(ids, []int64{1}), "ids %v", ids)

	current = "COPY in (pq.CopyIn)"
	tx, err = conn.BeginTx(ctx, nil)
	check(err)
	copyIn, err := tx.PrepareContext(ctx, pq.CopyIn(table, "id", "note"))
	check(err)
	for i := 100; i < 200; i++ {
		_, err = copyIn.ExecContext(ctx, i, fmt.Sprintf("row %d", i))
		check(err)
	}
	_, err = copyIn.ExecContext(ctx)
	check(err)
	check(copyIn.Close())
	check(tx.Commit())
	var copied int
	check(conn.QueryRowContext(ctx, fmt.Sprintf(
		"SELECT count(*) FROM %s WHERE id >= 100 AND note = 'row ' || id", table)).Scan(&copied))
	want(copied == 100, "copied %d", copied)
	check(conn.Close())

	current = "cancel a pg_sleep (context cancelled)"
	sleeper, err := db.Conn(ctx)
	check(err)
	sleepCtx, cancel := context.WithCancel(ctx)
	slept := make(chan error, 1)
	go func() {
		_, err := sleeper.ExecContext(sleepCtx, "SELECT pg_sleep(60) /* drivers-cancel */")
		slept <- err
	}()
	started := false
	for i := 0; i < 400 && !started; i++ {
		var n int
		check(db.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "+
			"AND query LIKE '%drivers-cancel%' AND pid <> pg_backend_pid()").Scan(&n))
		started = n == 1
		if !started {
			time.Sleep(50 * time.Millisecond)
		}
	}
	want(started, "the pg_sleep did not start")
	begun := time.Now()
	cancel() // lib/pq sends a CancelRequest
	select {
	case err := <-slept:
		want(err != nil, "the pg_sleep was not cancelled")
		want(errors.Is(err, context.Canceled) || sqlstate(err) == "57014", "cancelled: %v", err)
	case <-time.After(20 * time.Second):
		fail(errors.New("the pg_sleep was not cancelled within 20 s"))
	}
	// The server stopped the statement (not only the client waiting for it).
	for {
		var n int
		check(db.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "+
			"AND query LIKE '%drivers-cancel%' AND pid <> pg_backend_pid()").Scan(&n))
		if n == 0 {
			break
		}
		want(time.Since(begun) < 20*time.Second, "the pg_sleep still runs on the server")
		time.Sleep(50 * time.Millisecond)
	}
	sleeper.Close()

	current = "LISTEN/NOTIFY (pq.Listener)"
	listener := pq.NewListener(dsn(), 100*time.Millisecond, time.Second, nil)
	check(listener.Listen("drivers_go_pq"))
	_, err = db.ExecContext(ctx, "NOTIFY drivers_go_pq, 'hello from lib/pq'")
	check(err)
	select {
	case n := <-listener.Notify:
		want(n != nil && n.Extra == "hello from lib/pq", "notification %v", n)
	case <-time.After(10 * time.Second):
		fail(errors.New("no notification within 10 s"))
	}
	check(listener.Close())

	current = "10 concurrent clients (database/sql's pool, one transaction each time)"
	inClients(func(w, i int) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback() //nolint:errcheck // a no-op after Commit
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(
			"INSERT INTO %s (id, note, worker) VALUES ($1, 'w', $2)", table), 1000+i, w); err != nil {
			return err
		}
		var v int
		if err := tx.QueryRowContext(ctx, "SELECT $1::int + 1", i).Scan(&v); err != nil {
			return err
		}
		if v != i+1 {
			return fmt.Errorf("%d + 1 = %d", i, v)
		}
		return tx.Commit()
	})
	var n int
	check(db.QueryRowContext(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE note = 'w'", table)).Scan(&n))
	want(n == clients*12, "rows %d", n)
	check(db.Close())
	fmt.Println("OK")
}
