# ActiveRecord (Debian ruby-activerecord) on ruby-pg (ruby-pg) through a pgbay transaction pool.
# Run by tests/test_drivers.py. ActiveRecord prepares each query with binds and keeps
# statement_limit of them: 2 with ten distinct queries makes it evict (DEALLOCATE name, whose
# error ActiveRecord swallows: the program watches for it), and reset! runs DISCARD ALL.
require "active_record"
require "pg"
require "json"

$step = "start"
$dealloc_errors = []
$deallocs = 0
T = ENV.fetch("PGB_TABLE")
CLIENTS = 10

# ActiveRecord swallows a failed DEALLOCATE (the statement stays on the server): record it.
module DeallocWatch
  def query(sql, *args, &blk)
    $deallocs += 1 if sql.to_s.start_with?("DEALLOCATE")
    super
  rescue PG::Error => e
    $dealloc_errors << "#{sql}: #{e.message.strip} (SQLSTATE #{e.result&.error_field(PG::PG_DIAG_SQLSTATE)})" if sql.to_s.start_with?("DEALLOCATE")
    raise
  end
end
PG::Connection.prepend(DeallocWatch)

def step(name)
  $step = name
  yield
end

def want(cond, what)
  raise what unless cond
end

def conn_params
  { host: ENV.fetch("PGB_HOST"), port: ENV.fetch("PGB_PORT").to_i, dbname: ENV.fetch("PGB_DB"),
    user: ENV.fetch("PGB_USER"), password: ENV.fetch("PGB_PASSWORD"), sslmode: "verify-full",
    sslrootcert: ENV.fetch("PGB_CA"), connect_timeout: 10 }
end

# A migration, run as `rails db:migrate` runs it: under ActiveRecord's advisory lock (advisory_locks
# on, the default), taken with pg_try_advisory_lock on a connection of its own and released with
# pg_advisory_unlock once the migration is done, which must find it held.
class CreateDrvMigrated < ActiveRecord::Migration[6.1]
  def change
    create_table(:"#{T}_migrated") { |t| t.string :name }
  end
end

class Row < ActiveRecord::Base
  self.table_name = T
  self.primary_key = "pk"
end

def main
  p = conn_params
  ActiveRecord::Base.establish_connection(
    adapter: "postgresql", host: p[:host], port: p[:port], database: p[:dbname],
    username: p[:user], password: p[:password], sslmode: "verify-full", sslrootcert: p[:sslrootcert],
    connect_timeout: 10, prepared_statements: true, statement_limit: 2, pool: CLIENTS
  )
  conn = ActiveRecord::Base.connection

  step("connect over TLS verify-full") do
    want(conn.raw_connection.ssl_in_use?, "not TLS")
    conn.execute("CREATE TABLE IF NOT EXISTS #{T} (pk bigserial PRIMARY KEY, num int, note text, worker int)")
    conn.execute("TRUNCATE #{T}")
    Row.reset_column_information
  end

  step("parameters of common types (ruby-pg exec_params, text and binary)") do
    raw = conn.raw_connection
    bytes = (0..255).to_a.pack("C*")
    r = raw.exec_params(
      "SELECT $1::int::text, $2::text, $3::numeric::text, $4::bool::text, " \
      "($5::timestamptz AT TIME ZONE 'UTC')::text, encode($6::bytea, 'hex'), $7::json::text, $8::int[]::text",
      [42, "héllo, 'pool' \\ \"x\"", "12345.678901", true, "2026-12-03 07:45:01.123456+00",
       { value: bytes, format: 1 }, JSON.generate({ "a" => [1, 2, { "b" => nil }], "c" => "d" }),
       "{1,2,3,NULL,5}"]
    )
    want(r.values[0] == ["42", "héllo, 'pool' \\ \"x\"", "12345.678901", "true",
                         "2026-12-03 07:45:01.123456", bytes.unpack1("H*"),
                         '{"a":[1,2,{"b":null}],"c":"d"}', "{1,2,3,NULL,5}"], "types: #{r.values[0]}")
  end

  step("transaction with a savepoint rolled back (requires_new)") do
    ActiveRecord::Base.transaction do
      Row.create!(num: 1, note: "kept")
      ActiveRecord::Base.transaction(requires_new: true) do
        Row.create!(num: 2, note: "gone")
        raise ActiveRecord::Rollback
      end
    end
    want(Row.order(:num).pluck(:num) == [1], "ids #{Row.order(:num).pluck(:num)}")
  end

  step("COPY in and out (ruby-pg)") do
    raw = conn.raw_connection
    data = (100...200).map { |i| "#{i}\trow #{i}\n" }.join
    raw.copy_data("COPY #{T} (num, note) FROM STDIN") { raw.put_copy_data(data) }
    out = +""
    raw.copy_data("COPY (SELECT num, note FROM #{T} WHERE num >= 100 ORDER BY num) TO STDOUT") do
      while (row = raw.get_copy_data)
        out << row
      end
    end
    want(out.force_encoding("UTF-8") == data, "COPY out")
  end

  step("cancel a pg_sleep (ruby-pg cancel)") do
    sleeper = PG.connect(**conn_params)
    watcher = PG.connect(**conn_params)
    err = nil
    t = Thread.new do
      sleeper.exec("SELECT pg_sleep(60) /* drivers-cancel */")
    rescue PG::Error => e
      err = e
    end
    deadline = Time.now + 20
    until watcher.exec("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query " \
                       "LIKE '%drivers-cancel%' AND pid <> pg_backend_pid()").getvalue(0, 0) == "1"
      want(Time.now < deadline, "the pg_sleep did not start")
      sleep 0.05
    end
    sleeper.cancel
    want(t.join(30), "the cancelled query did not return")
    want(err.is_a?(PG::QueryCanceled), "cancelled pg_sleep: #{err.inspect}")
    want(sleeper.exec("SELECT 'after'").getvalue(0, 0) == "after", "after cancel")

    step("LISTEN/NOTIFY (ruby-pg)") do
      sleeper.exec("LISTEN drivers_rb")
      watcher.exec("NOTIFY drivers_rb, 'hello from ruby-pg'")
      got = nil
      sleeper.wait_for_notify(10) { |_ch, _pid, payload| got = payload }
      want(got == "hello from ruby-pg", "notification #{got.inspect}")
    end
    sleeper.close
    watcher.close
  end

  step("#{CLIENTS} concurrent clients (ActiveRecord pool)") do
    threads = (0...CLIENTS).map do |w|
      Thread.new do
        ActiveRecord::Base.connection_pool.with_connection do
          12.times do |i|
            ActiveRecord::Base.transaction do
              Row.create!(num: 1000 + i, note: "w", worker: w)
              want(Row.where(worker: w, num: 1000 + i).count == 1, "own row")
            end
          end
        end
      end
    end
    threads.each { |t| want(t.join(120), "a worker did not end") }
    want(Row.where(note: "w").count == CLIENTS * 12, "rows #{Row.where(note: 'w').count}")
  end

  step("statement cache eviction (statement_limit: 2, ten queries)") do
    # Ten distinct statements, all with binds (a SQL literal would make ActiveRecord skip
    # preparing).
    queries = %i[pk num note worker].product(%i[asc desc]).map do |col, dir|
      ->(r) { Row.where(num: r).order(col => dir).to_a }
    end
    queries << ->(r) { Row.where(num: r, worker: r).to_a }
    queries << ->(r) { Row.where(num: r, note: "x").to_a }
    3.times { |round| queries.each { |q| want(q.call(round).is_a?(Array), "query") } }
    want($deallocs >= 20, "ActiveRecord evicted #{$deallocs} statements only")
    want($dealloc_errors.empty?, "evicted statements not deallocated: #{$dealloc_errors.first}")
  end

  step("a migration under ActiveRecord's advisory lock (advisory_locks on)") do
    want(conn.advisory_locks_enabled?, "advisory locks off")
    version = (Time.now.to_f * 1000).to_i
    ActiveRecord::Migrator.new(:up, [CreateDrvMigrated.new("CreateDrvMigrated", version)],
                               conn.schema_migration).migrate
    want(conn.table_exists?("#{T}_migrated"), "the migration did not run")
    want(conn.schema_migration.where(version: version.to_s).exists?, "version not recorded")
    conn.drop_table("#{T}_migrated")
  end

  step("reset! (DISCARD ALL), then queries again") do
    5.times { |q| Row.where(num: q).order(:pk).to_a }
    conn.reset!
    want($dealloc_errors.empty?, "statements not deallocated on reset!: #{$dealloc_errors.first}")
    want(Row.where(num: 1).pluck(:note) == ["kept"], "after reset!")
  end
end

begin
  Thread.new { sleep 150; warn "FAIL in step '#{$step}': no end after 150 s"; exit!(1) }
  main
  puts "OK"
rescue Exception => e # rubocop:disable Lint/RescueException
  code = e.respond_to?(:result) && e.result ? e.result.error_field(PG::PG_DIAG_SQLSTATE) : nil
  code ||= e.cause.result.error_field(PG::PG_DIAG_SQLSTATE) if e.cause.respond_to?(:result) && e.cause.result
  warn "FAIL in step '#{$step}': #{e.class}: #{e.message} (SQLSTATE #{code})"
  warn e.backtrace.first(5).join("\n")
  exit 1
end
