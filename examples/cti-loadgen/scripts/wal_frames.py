#!/usr/bin/env python3
"""Which tables and indexes a running cti-server's SQLite writes cost.

Every page a SQLite transaction changes is appended to the write-ahead log as one frame (a
24-byte header and the page), and the background checkpoint later copies each distinct page
into the database file. So the frames per ingested event, split by the b-tree that owns each
page, say where the writer's and the checkpointer's I/O goes.

Usage, while `cti-loadgen webhook --rate max ...` runs against a server on `cti.db`:

    python3 examples/cti-loadgen/scripts/wal_frames.py path/to/cti.db

It reads the current WAL generation (the frames appended since the WAL last restarted, up to
the writer's autocheckpoint of 10,000 pages), takes a consistent copy of the database with
SQLite's backup API to learn which b-tree owns each page (the `dbstat` table, compiled into
Debian's and python.org's SQLite), and counts the events in the window from the inbox rows
(`webhook_events.seq`) found in the logged inbox pages. A page that moved owner between the two
reads is counted under its new owner; over thousands of frames that is noise.
"""

import argparse
import collections
import os
import sqlite3
import struct
import sys
import tempfile

WAL_HEADER = 32
FRAME_HEADER = 24


def varint(buf, i):
    """SQLite varint at buf[i]: (value, next index)."""
    v = 0
    for k in range(9):
        c = buf[i + k]
        if k == 8:
            return (v << 8) | c, i + 9
        v = (v << 7) | (c & 0x7F)
        if c < 0x80:
            return v, i + k + 1
    raise ValueError("unterminated varint")


def frames_of(wal):
    """(page number, is commit frame, page bytes) of the WAL's current generation."""
    if len(wal) < WAL_HEADER:
        return 0, []
    _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = struct.unpack(
        ">IIIIIIII", wal[:WAL_HEADER]
    )
    out, off = [], WAL_HEADER
    while off + FRAME_HEADER + page_size <= len(wal):
        page, commit, s1, s2 = struct.unpack(">IIII", wal[off : off + 16])
        if (s1, s2) != (salt1, salt2):
            break  # a frame of the previous generation: the current one ends here
        body = wal[off + FRAME_HEADER : off + FRAME_HEADER + page_size]
        out.append((page, commit != 0, body))
        off += FRAME_HEADER + page_size
    return page_size, out


def table_leaf_rowids(page, body):
    """Rowids of the cells of a table b-tree leaf page (type 13)."""
    hdr = 100 if page == 1 else 0
    if body[hdr] != 13:
        return []
    cells = struct.unpack(">H", body[hdr + 3 : hdr + 5])[0]
    rowids = []
    for j in range(cells):
        at = struct.unpack(">H", body[hdr + 8 + 2 * j : hdr + 10 + 2 * j])[0]
        _size, i = varint(body, at)
        rowid, _ = varint(body, i)
        rowids.append(rowid)
    return rowids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", help="the live database file (its -wal file must exist)")
    ap.add_argument("--top", type=int, default=25, help="rows to print")
    args = ap.parse_args()

    with open(args.db + "-wal", "rb") as f:
        wal = f.read()
    page_size, frames = frames_of(wal)
    if not frames:
        sys.exit("the WAL holds no frames of its current generation (is the server writing?)")

    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "copy.db")
        src = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        src.backup(dst, pages=-1)  # one step: a consistent snapshot
        src.close()
        owner = {
            pageno: (name, kind)
            for name, pageno, kind in dst.execute("SELECT name, pageno, pagetype FROM dbstat")
        }
        dst.close()

    counts = collections.Counter()
    distinct = collections.defaultdict(set)
    seqs = []
    for page, _commit, body in frames:
        key = owner.get(page, ("(freed or new)", "?"))
        counts[key] += 1
        distinct[key].add(page)
        if key == ("webhook_events", "leaf"):
            seqs.extend(table_leaf_rowids(page, body))
    commits = sum(1 for _p, c, _b in frames if c)
    events = (max(seqs) - min(seqs) + 1) if seqs else 0
    if events <= 0:
        sys.exit("no inbox rows in the window: cannot count events")

    print(f"page size {page_size} B, {len(frames)} frames in {commits} commits, "
          f"~{events} events ({events / max(commits, 1):.1f} per commit)")
    print(f"frames per event {len(frames) / events:.2f}, "
          f"distinct pages per event {sum(len(d) for d in distinct.values()) / events:.2f}")
    print(f"{'b-tree':42} {'page':9} {'frames/event':>12} {'distinct/event':>15}")
    for (name, kind), n in counts.most_common(args.top):
        print(f"{name:42} {kind:9} {n / events:12.3f} {len(distinct[(name, kind)]) / events:15.3f}")


if __name__ == "__main__":
    main()
