//go:build pgx

// pgx v4 (Debian golang-github-jackc-pgx-v4-dev) through a pgbay transaction pool. Run by
// tests/test_drivers.py (built with GO111MODULE=off against /usr/share/gocode). pgx prepares
// every query into its LRU statement cache; statement_cache_capacity=2 with ten distinct
// queries makes it evict (DEALLOCATE name).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func connString(extra string) string {
	// The password goes into the config, not the string (nor argv).
	return fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=verify-full sslrootcert=%s "+
		"connect_timeout=10 %s", os.Getenv("PGB_HOST"), os.Getenv("PGB_PORT"),
		os.Getenv("PGB_DB"), os.Getenv("PGB_USER"), os.Getenv("PGB_CA"), extra)
}

func connect(ctx context.Context, extra string) *pgx.Conn {
	cfg, err := pgx.ParseConfig(connString(extra))
	check(err)
	cfg.Password = os.Getenv("PGB_PASSWORD")
	conn, err := pgx.ConnectConfig(ctx, cfg)
	check(err)
	return conn
}

func main() {
	ctx := context.Background()
	deadline := time.AfterFunc(150*time.Second, func() { fail(errors.New("no end after 150 s")) })
	defer deadline.Stop()

	current = "connect over TLS verify-full"
	conn := connect(ctx, "")
	want(conn.PgConn().Conn() != nil, "no connection")
	_, err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (id int, note text, worker int)", table))
	check(err)
	_, err = conn.Exec(ctx, "TRUNCATE "+table)
	check(err)

	current = "parameters of common types"
	ts := time.Date(2026, 12, 3, 7, 45, 1, 123456000, time.UTC)
	raw := make([]byte, 256)
	for i := range raw {
		raw[i] = byte(i)
	}
	doc := map[string]interface{}{"a": []interface{}{1.0, 2.0, map[string]interface{}{"b": nil}}, "c": "d"}
	for i := 0; i < 3; i++ {
		var (
			n     int32
			s     string
			num   string
			b     bool
			t     time.Time
			by    []byte
			js    map[string]interface{}
			arr   []int32
			jsRaw []byte
		)
		err = conn.QueryRow(ctx, "SELECT $1::int, $2::text, $3::numeric::text, $4::bool, "+
			"$5::timestamptz, $6::bytea, $7::json, $8::int[]",
			int32(42), "héllo, 'pool' \\ \"x\"", "12345.678901", true, ts, raw, doc,
			[]int32{1, 2, 3, 5}).Scan(&n, &s, &num, &b, &t, &by, &jsRaw, &arr)
		check(err)
		check(json.Unmarshal(jsRaw, &js))
		want(n == 42 && s == "héllo, 'pool' \\ \"x\"" && num == "12345.678901" && b,
			"scalars: %v %q %q %v", n, s, num, b)
		want(t.Equal(ts), "timestamptz: %v", t)
		want(bytes.Equal(by, raw), "bytea")
		want(reflect.DeepEqual(js, doc), "json: %v", js)
		want(reflect.DeepEqual(arr, []int32{1, 2, 3, 5}), "int[]: %v", arr)
	}

	current = "explicit named prepared statement"
	_, err = conn.Prepare(ctx, "double", "SELECT $1::int * 2")
	check(err)
	for i := int32(0); i < 5; i++ {
		var v int32
		check(conn.QueryRow(ctx, "double", i).Scan(&v))
		want(v == 2*i, "double(%d) = %d", i, v)
	}

	current = "transaction with a savepoint rolled back"
	tx, err := conn.Begin(ctx)
	check(err)
	_, err = tx.Exec(ctx, "INSERT INTO "+table+" (id, note) VALUES (1, 'kept')")
	check(err)
	sp, err := tx.Begin(ctx) // a savepoint
	check(err)
	_, err = sp.Exec(ctx, "INSERT INTO "+table+" (id, note) VALUES (2, 'gone')")
	check(err)
	_, err = sp.Exec(ctx, "SELECT 1/0")
	var pgErr *pgconn.PgError
	want(errors.As(err, &pgErr) && pgErr.Code == "22012", "1/0: %v", err)
	check(sp.Rollback(ctx))
	check(tx.Commit(ctx))
	var ids []int32
	check(conn.QueryRow(ctx, "SELECT array_agg(id ORDER BY id) FROM "+table).Scan(&ids))
	want(reflect.DeepEqual(ids, []int32{1}), "ids after savepoint: %v", ids)

	current = "COPY in and out"
	rows := [][]interface{}{}
	var expect strings.Builder
	for i := 100; i < 200; i++ {
		rows = append(rows, []interface{}{int32(i), fmt.Sprintf("row %d", i)})
		fmt.Fprintf(&expect, "%d\trow %d\n", i, i)
	}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "note"}, pgx.CopyFromRows(rows))
	check(err)
	want(copied == 100, "copied %d", copied)
	var out bytes.Buffer
	_, err = conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT id, note FROM "+table+" WHERE id >= 100 ORDER BY id) TO STDOUT")
	check(err)
	want(out.String() == expect.String(), "COPY out: %q", out.String()[:40])

	current = "cancel a pg_sleep"
	watcher := connect(ctx, "")
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(60) /* drivers-cancel */")
		done <- err
	}()
	for i := 0; ; i++ {
		var n int
		check(watcher.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "+
			"AND query LIKE '%drivers-cancel%' AND pid <> pg_backend_pid()").Scan(&n))
		if n == 1 {
			break
		}
		want(i < 400, "the pg_sleep did not start")
		time.Sleep(50 * time.Millisecond)
	}
	check(conn.PgConn().CancelRequest(ctx))
	select {
	case err = <-done:
		want(errors.As(err, &pgErr) && pgErr.Code == "57014", "cancelled pg_sleep: %v", err)
	case <-time.After(30 * time.Second):
		fail(errors.New("the cancelled query did not return"))
	}
	var after string
	check(conn.QueryRow(ctx, "SELECT 'after'").Scan(&after))

	current = "LISTEN/NOTIFY"
	_, err = conn.Exec(ctx, "LISTEN drivers_pgx")
	check(err)
	_, err = watcher.Exec(ctx, "NOTIFY drivers_pgx, 'hello from pgx'")
	check(err)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	note, err := conn.WaitForNotification(wctx)
	cancel()
	check(err)
	want(note.Payload == "hello from pgx", "payload %q", note.Payload)
	check(conn.Close(ctx))
	check(watcher.Close(ctx))

	current = fmt.Sprintf("%d concurrent clients (pgxpool)", clients)
	pcfg, err := pgxpool.ParseConfig(connString(fmt.Sprintf("pool_max_conns=%d", clients)))
	check(err)
	pcfg.ConnConfig.Password = os.Getenv("PGB_PASSWORD")
	pool, err := pgxpool.ConnectConfig(ctx, pcfg)
	check(err)
	inClients(func(w, i int) error {
		return pool.BeginFunc(ctx, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "INSERT INTO "+table+" (id, note, worker) VALUES ($1, 'w', $2)", 1000+i, w); err != nil {
				return err
			}
			var v int
			if err := tx.QueryRow(ctx, "SELECT $1::int + 1", i).Scan(&v); err != nil {
				return err
			}
			if v != i+1 {
				return fmt.Errorf("%d + 1 = %d", i, v)
			}
			return nil
		})
	})
	var total int
	check(pool.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE note = 'w'").Scan(&total))
	want(total == clients*12, "rows %d", total)
	pool.Close()

	// Last: what fails on a pooler that refuses DEALLOCATE name (issue 20).
	current = "statement cache eviction (statement_cache_capacity=2, ten queries)"
	small := connect(ctx, "statement_cache_capacity=2")
	for round := 0; round < 3; round++ {
		for q := 0; q < 10; q++ {
			var v int
			check(small.QueryRow(ctx, fmt.Sprintf("SELECT $1::int + %d", q), round).Scan(&v))
			want(v == round+q, "query %d: %d", q, v)
		}
	}
	check(small.Close(ctx))
	fmt.Println("OK")
}
