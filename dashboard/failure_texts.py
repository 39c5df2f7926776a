"""Failure texts: each distinct failure text stored and indexed for search once (migration 10).

A fleet repeats itself: the same test fails with the same message and traceback on every minion
and in every run. Indexing every failed result's text (migrations 5-9) made the full-text insert
the largest cost of ingesting a failure on SQLite, and a common word matched every failure ever
stored on PostgreSQL. So:

- ``failure_texts`` holds one row per distinct ``(signature, message, longrepr)``, keyed by
  ``digest`` (:func:`text_digest`, 16 bytes of SHA-256: long tracebacks cannot be a unique key
  themselves, a PostgreSQL b-tree entry is limited to ~2.7 KB). The signature is part of the key so
  that a text says which signature it belongs to: the failures view's search reads texts only.
- ``results.text_id`` points a failed/errored result at its text (NULL for every other row); one
  partial index over the failing rows only, ``results_text`` (text, run), finds a text's results
  newest first (migration 11 dropped the second, ``results_text_newest``, and the signature's
  ``results_signature``: dashboard/failures.newest_failures merges the texts' newest instead).
- The full-text index covers the texts only: SQLite an FTS5 table ``failure_text_search`` with
  ``failure_texts`` as its external content, kept by triggers; PostgreSQL a GIN index on the
  stored column ``failure_texts.search`` (:data:`SEARCH_DOCUMENT_SQL`: every run of characters
  that are not letters or digits becomes a space first, so ``response.status`` and ``test_case``
  are two words each, as SQLite's unicode61 tokenizer reads them). Stored, not an index
  expression: a search of a few texts reads them instead of recomputing each one's words.

Who writes what: the ingester computes each failing row's digest where it computes the signature
(dashboard/ingest/validate.py, in the validation worker when there is one); the writer looks up or
inserts only the batch's distinct texts (:func:`store_texts`), once per transaction. The ids are
not cached across transactions: prune deletes texts no longer referenced by any result
(:func:`texts_of_runs`, :func:`drop_unreferenced_texts`), possibly from another process, so an id
is only trusted inside the transaction that read it (one indexed read per batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from dashboard.dialect import chunks, insert_many_returning


def text_digest(signature: str, message: str | None, longrepr: str | None) -> bytes:
    """The key of a failure text: SHA-256 of its parts, each text prefixed by its UTF-8 length
    (``-`` for NULL), first 16 bytes. :func:`digest_sql_postgres` computes the same in SQL."""
    parts = [signature.encode()]
    for text in (message, longrepr):
        if text is None:
            parts.append(b"-")
        else:
            data = text.encode()
            parts.append(b"%d:%s" % (len(data), data))
    return hashlib.sha256(b":".join(parts)).digest()[:16]


def digest_sql_postgres(table: str = "") -> str:
    """:func:`text_digest` in PostgreSQL's SQL, over the columns of ``results`` (or of ``table``)."""
    signature, message, longrepr = (f"{table}.{column}" if table else column
                                    for column in ("signature", "message", "longrepr"))
    return (f"substring(sha256(convert_to({signature} || ':' || coalesce(octet_length({message}) || ':' || "
            f"{message}, '-') || ':' || coalesce(octet_length({longrepr}) || ':' || {longrepr}, '-'), 'UTF8')) "
            "from 1 for 16)")


# What PostgreSQL indexes of a text (failure_texts.search, a stored generated column).
SEARCH_DOCUMENT_SQL = (
    "to_tsvector('simple', regexp_replace(coalesce(message, '') || ' ' || coalesce(longrepr, ''), "
    "'[^[:alnum:]]+', ' ', 'g'))"
)


def fill_texts_sqlite(conn: Any) -> None:
    """Migration 10 on SQLite: a text row for every distinct failure text stored, and each failed
    result's ``text_id`` (SQLite has no SHA-256 of its own: :func:`text_digest` is lent to it)."""
    conn.create_function("distmon_text_digest", 3, text_digest, deterministic=True)
    conn.execute(
        "INSERT INTO failure_texts (digest, signature, message, longrepr) "
        "SELECT distmon_text_digest(signature, message, longrepr), signature, message, longrepr FROM results "
        "WHERE signature IS NOT NULL ORDER BY id ON CONFLICT (digest) DO NOTHING"
    )
    conn.execute(
        "UPDATE results SET text_id = (SELECT f.id FROM failure_texts f "
        "WHERE f.digest = distmon_text_digest(results.signature, results.message, results.longrepr)) "
        "WHERE signature IS NOT NULL"
    )


def store_texts(conn: Any, texts: Mapping[bytes, tuple[str, str | None, str | None]],
                known: dict[bytes, int]) -> None:
    """Put the id of every text of ``texts`` (digest -> (signature, message, longrepr)) into
    ``known``, inserting the new ones; digests already in ``known`` are not looked up again.

    In the writer's transaction: one indexed read for the unknown digests, one insert for the new
    texts (on SQLite a trigger adds each to the search index).
    """
    wanted = [digest for digest in texts if digest not in known]
    for chunk in chunks(wanted):
        known.update((bytes(digest), text_id) for digest, text_id in conn.execute(
            f"SELECT digest, id FROM failure_texts WHERE digest IN ({','.join('?' * len(chunk))})",  # noqa: S608
            chunk,
        ).fetchall())
    new = [(digest, *texts[digest]) for digest in wanted if digest not in known]
    if new:
        known.update((bytes(digest), text_id) for digest, text_id in insert_many_returning(
            conn,
            "INSERT INTO failure_texts (digest, signature, message, longrepr) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (digest) DO NOTHING RETURNING digest, id",
            new,
        ))


def texts_of_runs(conn: Any, run_ids_sql: str, params: Iterable = ()) -> list[int]:
    """The texts the failures of the runs selected by ``run_ids_sql`` point at (before a prune deletes them)."""
    return [row[0] for row in conn.execute(
        f"SELECT DISTINCT text_id FROM results WHERE run_id IN ({run_ids_sql}) AND text_id IS NOT NULL",  # noqa: S608
        tuple(params),
    ).fetchall()]


def drop_unreferenced_texts(conn: Any, text_ids: Iterable[int]) -> int:
    """Delete those of ``text_ids`` no result points at any more (after a prune): the search index
    keeps only the texts of stored failures. Returns how many went."""
    gone = 0
    for chunk in chunks(sorted(set(text_ids))):
        gone += conn.execute(
            f"DELETE FROM failure_texts WHERE id IN ({','.join('?' * len(chunk))}) "  # noqa: S608
            "AND NOT EXISTS (SELECT 1 FROM results x WHERE x.text_id = failure_texts.id)",
            chunk,
        ).rowcount
    return gone
