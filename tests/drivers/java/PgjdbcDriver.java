// pgjdbc (Debian libpostgresql-jdbc-java) through a pgbay transaction pool. Run by
// tests/test_drivers.py (compiled with javac into a temp dir). pgjdbc prepares on the server after
// prepareThreshold executions and keeps preparedStatementCacheQueries statements; 2 of them with
// ten distinct queries makes it evict (protocol-level Close).

import java.io.ByteArrayOutputStream;
import java.io.StringReader;
import java.math.BigDecimal;
import java.sql.*;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.*;
import java.util.concurrent.*;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class PgjdbcDriver {
    static String step = "start";
    static final String T = System.getenv("PGB_TABLE");
    static final int CLIENTS = 10;

    static Connection connect(String extra) throws SQLException {
        String url = "jdbc:postgresql://" + System.getenv("PGB_HOST") + ":" + System.getenv("PGB_PORT")
            + "/" + System.getenv("PGB_DB") + "?sslmode=verify-full&connectTimeout=10&sslrootcert="
            + System.getenv("PGB_CA") + extra;
        Properties p = new Properties();
        p.setProperty("user", System.getenv("PGB_USER"));
        p.setProperty("password", System.getenv("PGB_PASSWORD"));
        return DriverManager.getConnection(url, p);
    }

    static void want(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    public static void main(String[] args) {
        Timer guard = new Timer(true);
        guard.schedule(new TimerTask() {
            public void run() {
                System.err.println("FAIL in step '" + step + "': no end after 150 s");
                System.exit(1);
            }
        }, 150_000);
        try {
            run();
        } catch (Throwable e) {
            String state = e instanceof SQLException ? ((SQLException) e).getSQLState() : null;
            System.err.println("FAIL in step '" + step + "': " + e + " (SQLSTATE " + state + ")");
            e.printStackTrace();
            System.exit(1);
        }
        System.out.println("OK");
        System.exit(0);
    }

    static void run() throws Exception {
        step = "connect over TLS verify-full";
        Connection c = connect("");
        try (Statement s = c.createStatement()) {
            s.execute("CREATE TABLE IF NOT EXISTS " + T + " (id int, note text, worker int)");
            s.execute("TRUNCATE " + T);
        }

        step = "parameters of common types (past prepareThreshold: server-prepared)";
        OffsetDateTime ts = OffsetDateTime.of(2026, 12, 3, 7, 45, 1, 123456000, ZoneOffset.UTC);
        byte[] raw = new byte[256];
        for (int i = 0; i < 256; i++) raw[i] = (byte) i;
        String json = "{\"a\": [1, 2, {\"b\": null}], \"c\": \"d\"}";
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int, ?::text, ?::numeric, ?::bool, "
                + "?::timestamptz, ?::bytea, ?::json, ?::int[]")) {
            for (int round = 0; round < 7; round++) {
                ps.setInt(1, 42);
                ps.setString(2, "héllo, 'pool' \\ \"x\"");
                ps.setBigDecimal(3, new BigDecimal("12345.678901"));
                ps.setBoolean(4, true);
                ps.setObject(5, ts);
                ps.setBytes(6, raw);
                ps.setObject(7, json, Types.OTHER);
                ps.setArray(8, c.createArrayOf("int4", new Integer[] {1, 2, 3, null, 5}));
                try (ResultSet rs = ps.executeQuery()) {
                    want(rs.next(), "no row");
                    want(rs.getInt(1) == 42, "int");
                    want(rs.getString(2).equals("héllo, 'pool' \\ \"x\""), "text " + rs.getString(2));
                    want(rs.getBigDecimal(3).equals(new BigDecimal("12345.678901")), "numeric");
                    want(rs.getBoolean(4), "bool");
                    want(rs.getObject(5, OffsetDateTime.class).isEqual(ts), "timestamptz " + rs.getObject(5, OffsetDateTime.class));
                    want(Arrays.equals(rs.getBytes(6), raw), "bytea");
                    want(rs.getString(7).equals(json), "json " + rs.getString(7));
                    want(Arrays.equals((Integer[]) rs.getArray(8).getArray(), new Integer[] {1, 2, 3, null, 5}), "int[]");
                }
            }
        }

        step = "statement cache eviction (prepareThreshold=1, preparedStatementCacheQueries=2, ten queries)";
        try (Connection small = connect("&prepareThreshold=1&preparedStatementCacheQueries=2")) {
            for (int round = 0; round < 3; round++) {
                for (int q = 0; q < 10; q++) {
                    try (PreparedStatement ps = small.prepareStatement("SELECT ?::int + " + q)) {
                        for (int k = 0; k < 2; k++) {
                            ps.setInt(1, round);
                            try (ResultSet rs = ps.executeQuery()) {
                                rs.next();
                                want(rs.getInt(1) == round + q, "query " + q);
                            }
                        }
                    }
                }
            }
        }

        step = "transaction with a savepoint rolled back";
        c.setAutoCommit(false);
        try (Statement s = c.createStatement()) {
            s.execute("INSERT INTO " + T + " (id, note) VALUES (1, 'kept')");
            Savepoint sp = c.setSavepoint("s1");
            s.execute("INSERT INTO " + T + " (id, note) VALUES (2, 'gone')");
            try {
                s.execute("SELECT 1/0");
                throw new AssertionError("1/0 succeeded");
            } catch (SQLException e) {
                want("22012".equals(e.getSQLState()), "1/0: " + e);
            }
            c.rollback(sp);
            c.commit();
            try (ResultSet rs = s.executeQuery("SELECT array_agg(id ORDER BY id)::text FROM " + T)) {
                rs.next();
                want(rs.getString(1).equals("{1}"), "ids " + rs.getString(1));
            }
            c.commit();
        }
        c.setAutoCommit(true);

        step = "COPY in and out";
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        StringBuilder data = new StringBuilder();
        for (int i = 100; i < 200; i++) data.append(i).append("\trow ").append(i).append('\n');
        long n = cm.copyIn("COPY " + T + " (id, note) FROM STDIN", new StringReader(data.toString()));
        want(n == 100, "copied " + n);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        cm.copyOut("COPY (SELECT id, note FROM " + T + " WHERE id >= 100 ORDER BY id) TO STDOUT", out);
        want(out.toString("UTF-8").equals(data.toString()), "COPY out");

        step = "cancel a pg_sleep";
        try (Connection watcher = connect(""); Statement sleeper = c.createStatement()) {
            ExecutorService ex = Executors.newSingleThreadExecutor();
            Future<SQLException> f = ex.submit(() -> {
                try {
                    sleeper.execute("SELECT pg_sleep(60) /* drivers-cancel */");
                    return null;
                } catch (SQLException e) {
                    return e;
                }
            });
            long deadline = System.currentTimeMillis() + 20_000;
            while (true) {
                try (Statement w = watcher.createStatement(); ResultSet rs = w.executeQuery(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                        + "query LIKE '%drivers-cancel%' AND pid <> pg_backend_pid()")) {
                    rs.next();
                    if (rs.getInt(1) == 1) break;
                }
                want(System.currentTimeMillis() < deadline, "the pg_sleep did not start");
                Thread.sleep(50);
            }
            sleeper.cancel();
            SQLException e = f.get(30, TimeUnit.SECONDS);
            want(e != null && "57014".equals(e.getSQLState()), "cancelled pg_sleep: " + e);
            ex.shutdown();

        }

        step = CLIENTS + " concurrent clients";
        ExecutorService pool = Executors.newFixedThreadPool(CLIENTS);
        List<Future<Void>> fs = new ArrayList<>();
        for (int w = 0; w < CLIENTS; w++) {
            final int worker = w;
            fs.add(pool.submit(() -> {
                try (Connection wc = connect("")) {
                    wc.setAutoCommit(false);
                    try (PreparedStatement ins = wc.prepareStatement("INSERT INTO " + T + " (id, note, worker) VALUES (?, 'w', ?)");
                         PreparedStatement inc = wc.prepareStatement("SELECT ?::int + 1")) {
                        for (int i = 0; i < 12; i++) {
                            ins.setInt(1, 1000 + i);
                            ins.setInt(2, worker);
                            ins.executeUpdate();
                            inc.setInt(1, i);
                            try (ResultSet rs = inc.executeQuery()) {
                                rs.next();
                                want(rs.getInt(1) == i + 1, "inc");
                            }
                            wc.commit();
                        }
                    }
                }
                return null;
            }));
        }
        for (Future<Void> f : fs) {
            try {
                f.get(120, TimeUnit.SECONDS);
            } catch (ExecutionException e) {
                throw (Exception) e.getCause();
            }
        }
        pool.shutdown();
        try (Connection cc = connect(""); Statement s = cc.createStatement();
             ResultSet rs = s.executeQuery("SELECT count(*) FROM " + T + " WHERE note = 'w'")) {
            rs.next();
            want(rs.getInt(1) == CLIENTS * 12, "rows " + rs.getInt(1));
        }

        // Last: a LISTEN pgjdbc sends through the extended protocol (issue 20's report).
        step = "LISTEN/NOTIFY";
        try (Connection watcher = connect("")) {
            try (Statement s = c.createStatement()) {
                s.execute("LISTEN drivers_jdbc");
            }
            try (Statement s = watcher.createStatement()) {
                s.execute("NOTIFY drivers_jdbc, 'hello from pgjdbc'");
            }
            PGNotification[] notes = c.unwrap(PGConnection.class).getNotifications(10_000);
            want(notes != null && notes.length == 1 && notes[0].getParameter().equals("hello from pgjdbc"),
                "notifications " + Arrays.toString(notes));
        }
        c.close();
    }
}
