"""Django's ORM on its default settings (psycopg 3, server-side cursors on: no
DISABLE_SERVER_SIDE_CURSORS) through a pgbay transaction pool. Django's documentation asks for
DISABLE_SERVER_SIDE_CURSORS behind a transaction pooler, because `QuerySet.iterator()` in
autocommit declares a cursor WITH HOLD in one transaction and fetches it in the next ones; pgbay
keeps the client's server connection while the cursor is open. Run by tests/test_drivers.py;
exits non-zero naming the failed step."""

from __future__ import annotations

import django
from django.conf import settings

from common import CA, CLIENTS, DB, HOST, PASSWORD, PORT, TABLE, USER, in_threads, run, step

settings.configure(
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql", "HOST": HOST, "PORT": PORT, "NAME": DB,
        "USER": USER, "PASSWORD": PASSWORD,
        "OPTIONS": {"sslmode": "verify-full", "sslrootcert": CA, "connect_timeout": 10},
    }},
    INSTALLED_APPS=[], USE_TZ=True, TIME_ZONE="UTC",
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()

from django.db import connection, connections, models, transaction  # noqa: E402
from django.db.utils import IntegrityError  # noqa: E402

ROWS = 2500
CHUNK = 300


class Item(models.Model):
    num = models.IntegerField()
    note = models.TextField(default="")
    worker = models.IntegerField(null=True)

    class Meta:
        app_label = "drv"
        db_table = f"{TABLE}_django"


def main() -> None:
    with step("connect over TLS verify-full (psycopg 3)"):
        connection.ensure_connection()
        assert connection.connection.pgconn.ssl_in_use, "not TLS"
        assert not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"), "cursors off"
        with connection.schema_editor() as editor:
            editor.execute(f"DROP TABLE IF EXISTS {Item._meta.db_table}")
            editor.create_model(Item)

    with step("bulk_create"):
        Item.objects.bulk_create(Item(num=i) for i in range(ROWS))
        assert Item.objects.count() == ROWS

    with step("QuerySet.iterator() in autocommit (a cursor WITH HOLD fetched in chunks)"):
        seen = total = 0
        for item in Item.objects.order_by("num").iterator(chunk_size=CHUNK):
            assert item.num == seen, (item.num, seen)
            seen += 1
            total += item.num
            if item.num % CHUNK == 0:
                # Other queries of the same connection between the cursor's chunks.
                assert Item.objects.filter(num=item.num).exists()
        assert (seen, total) == (ROWS, ROWS * (ROWS - 1) // 2), (seen, total)
        # Closed once read to its end: nothing left on the connection.
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_cursors")
            assert cur.fetchone()[0] == 0, "a cursor left open"

    with step("two iterators open at once, one left before its end"):
        a = Item.objects.order_by("num").values_list("num", flat=True).iterator(chunk_size=CHUNK)
        b = Item.objects.order_by("-num").values_list("num", flat=True).iterator(chunk_size=CHUNK)
        firsts = [(next(a), next(b)) for _ in range(CHUNK + 5)]
        assert firsts[-1] == (CHUNK + 4, ROWS - CHUNK - 5), firsts[-1]
        del a
        assert sum(1 for _ in b) == ROWS - CHUNK - 5

    with step("QuerySet.iterator() inside atomic (a cursor WITHOUT HOLD)"):
        with transaction.atomic():
            assert sum(1 for _ in Item.objects.iterator(chunk_size=CHUNK)) == ROWS

    with step("atomic with a nested atomic rolled back (savepoint)"):
        with transaction.atomic():
            Item.objects.create(num=-1, note="kept")
            try:
                with transaction.atomic():
                    Item.objects.create(num=-2, note="rolled back")
                    raise IntegrityError("roll back the savepoint")
            except IntegrityError:
                pass
        assert list(Item.objects.filter(num__lt=0).values_list("note", flat=True)) == ["kept"]

    with step("select_for_update in atomic"):
        with transaction.atomic():
            row = Item.objects.select_for_update().get(num=-1)
            row.note = "locked and updated"
            row.save()
        assert Item.objects.get(num=-1).note == "locked and updated"

    with step(f"{CLIENTS} concurrent clients (a connection per thread), iterators among them"):
        def worker(w: int) -> None:
            try:
                for i in range(8):
                    with transaction.atomic():
                        Item.objects.create(num=10_000 + i, note="w", worker=w)
                    if i % 4 == 0:
                        low = Item.objects.filter(num__gte=0, num__lt=500)
                        n = sum(1 for _ in low.iterator(chunk_size=100))
                        assert n == 500, n
                assert Item.objects.filter(worker=w).count() == 8
            finally:
                connections.close_all()
        in_threads(worker)
        assert Item.objects.filter(note="w").count() == CLIENTS * 8

    with step("drop the table"):
        with connection.schema_editor() as editor:
            editor.delete_model(Item)


if __name__ == "__main__":
    run(main)
