<?php
// PHP PDO (Debian php-pgsql) through a pgbay transaction pool. Run by tests/test_drivers.py.
// PDO prepares each statement on the server (pdo_stmt_N) and deallocates it when the statement
// object goes; its 10 concurrent clients are child processes (`php pdo_driver.php worker N`).
// PDO has no cancel.

$step = 'start';
$T = getenv('PGB_TABLE');
const CLIENTS = 10;

function fail($msg, $code = null) {
    global $step;
    fwrite(STDERR, "FAIL in step '$step': $msg (SQLSTATE $code)\n");
    exit(1);
}

function want($cond, $what) {
    if (!$cond) fail($what);
}

function connect() {
    $dsn = sprintf('pgsql:host=%s;port=%s;dbname=%s;sslmode=verify-full;sslrootcert=%s;connect_timeout=10',
        getenv('PGB_HOST'), getenv('PGB_PORT'), getenv('PGB_DB'), getenv('PGB_CA'));
    return new PDO($dsn, getenv('PGB_USER'), getenv('PGB_PASSWORD'), [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_EMULATE_PREPARES => false,
    ]);
}

function worker($w) {
    global $T;
    $db = connect();
    $ins = $db->prepare("INSERT INTO $T (id, note, worker) VALUES (?, 'w', ?)");
    $inc = $db->prepare('SELECT ?::int + 1');
    for ($i = 0; $i < 12; $i++) {
        $db->beginTransaction();
        $ins->execute([1000 + $i, $w]);
        $inc->execute([$i]);
        want((int)$inc->fetchColumn() === $i + 1, 'inc');
        $db->commit();
    }
}

function main() {
    global $step, $T;
    $step = 'connect over TLS verify-full';
    $db = connect();
    $db->exec("CREATE TABLE IF NOT EXISTS $T (id int, note text, worker int)");
    $db->exec("TRUNCATE $T");

    $step = 'parameters of common types (server-side prepared)';
    $bytes = '';
    for ($i = 0; $i < 256; $i++) $bytes .= chr($i);
    $st = $db->prepare("SELECT :i::int, :t::text, :n::numeric::text, :b::bool, "
        . "(:ts::timestamptz AT TIME ZONE 'UTC')::text, encode(:by::bytea, 'hex'), :j::json::text, "
        . ":a::int[]::text");
    for ($round = 0; $round < 3; $round++) {
        $st->bindValue(':i', 42, PDO::PARAM_INT);
        $st->bindValue(':t', "héllo, 'pool' \\ \"x\"", PDO::PARAM_STR);
        $st->bindValue(':n', '12345.678901', PDO::PARAM_STR);
        $st->bindValue(':b', true, PDO::PARAM_BOOL);
        $st->bindValue(':ts', '2026-12-03 07:45:01.123456+00', PDO::PARAM_STR);
        $st->bindValue(':by', $bytes, PDO::PARAM_LOB);
        $st->bindValue(':j', json_encode(['a' => [1, 2, ['b' => null]], 'c' => 'd']), PDO::PARAM_STR);
        $st->bindValue(':a', '{1,2,3,NULL,5}', PDO::PARAM_STR);
        $st->execute();
        $row = $st->fetch(PDO::FETCH_NUM);
        $want = ['42', "héllo, 'pool' \\ \"x\"", '12345.678901', true, '2026-12-03 07:45:01.123456',
                 bin2hex($bytes), '{"a":[1,2,{"b":null}],"c":"d"}', '{1,2,3,NULL,5}'];
        want($row == $want, 'types: ' . json_encode($row));
    }
    $st = null;

    $step = 'statements prepared and deallocated (ten distinct, three rounds)';
    for ($round = 0; $round < 3; $round++) {
        for ($q = 0; $q < 10; $q++) {
            $s = $db->prepare("SELECT ?::int + $q");
            $s->execute([$round]);
            want((int)$s->fetchColumn() === $round + $q, "query $q");
            $s = null; // PDO deallocates it here
        }
    }

    $step = 'transaction with a savepoint rolled back';
    $db->beginTransaction();
    $db->exec("INSERT INTO $T (id, note) VALUES (1, 'kept')");
    $db->exec('SAVEPOINT s1');
    $db->exec("INSERT INTO $T (id, note) VALUES (2, 'gone')");
    try {
        $db->query('SELECT 1/0');
        fail('1/0 succeeded');
    } catch (PDOException $e) {
        want($e->getCode() === '22012', '1/0: ' . $e->getMessage());
    }
    $db->exec('ROLLBACK TO SAVEPOINT s1');
    $db->commit();
    want($db->query("SELECT array_agg(id ORDER BY id)::text FROM $T")->fetchColumn() === '{1}', 'ids');

    $step = 'COPY in and out';
    $rows = [];
    for ($i = 100; $i < 200; $i++) $rows[] = "$i\trow $i";
    want($db->pgsqlCopyFromArray($T, $rows, "\t", '\\\\N', 'id, note'), 'COPY in');
    $out = $db->pgsqlCopyToArray("(SELECT id, note FROM $T WHERE id >= 100 ORDER BY id)", "\t");
    want(array_map('rtrim', $out) == $rows, 'COPY out: ' . json_encode(array_slice($out, 0, 2)));

    $step = 'LISTEN/NOTIFY';
    $other = connect();
    $db->exec('LISTEN drivers_php');
    $other->exec("NOTIFY drivers_php, 'hello from PDO'");
    $n = $db->pgsqlGetNotify(PDO::FETCH_ASSOC, 10000);
    want($n !== false && $n['payload'] === 'hello from PDO', 'notification ' . json_encode($n));

    $step = CLIENTS . ' concurrent clients (processes)';
    $procs = [];
    for ($w = 0; $w < CLIENTS; $w++) {
        $procs[] = proc_open([PHP_BINARY, __FILE__, 'worker', (string)$w], [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $allpipes[] = $pipes;
    }
    foreach ($procs as $k => $p) {
        $err = stream_get_contents($allpipes[$k][2]);
        stream_get_contents($allpipes[$k][1]);
        $rc = proc_close($p);
        want($rc === 0, "worker $k exited $rc: $err");
    }
    $n = (int)$db->query("SELECT count(*) FROM $T WHERE note = 'w'")->fetchColumn();
    want($n === CLIENTS * 12, "rows $n");
}

try {
    if (($argv[1] ?? '') === 'worker') {
        $step = "worker $argv[2]";
        worker((int)$argv[2]);
        exit(0);
    }
    main();
    echo "OK\n";
} catch (Throwable $e) {
    fail(get_class($e) . ': ' . $e->getMessage(), $e instanceof PDOException ? $e->getCode() : null);
}
