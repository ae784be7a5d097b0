"""The SQL examples of README.md and docs/: found, run with psql, and checked against what a real
subscriber receives. Used by tests/test_docs.py (every example) and tests/test_cron.py (the ones
that need pg_cron).

An example is a ```sql fenced block. HTML comments right after its closing fence (blank lines
between are allowed; they are invisible when the markdown is rendered) say what it must do:

    <!-- arrives: TOPIC [qos=N] [retain] PAYLOAD -->     the one message it publishes
    <!-- arrives:
    TOPIC [qos=N] [retain] PAYLOAD
    TOPIC [qos=N] [retain] PAYLOAD
    -->                                                   several, in any order
    <!-- arrives within 75 s: ... -->                     a longer wait than the default 15 s
    <!-- error: 22023 42704 -->                           the SQLSTATEs its statements fail
                                                          with, in this order
    <!-- needs: pg_cron -->                               runs only where pg_cron is installed

PAYLOAD is the exact text of the payload, where `...` stands for any text; `\\x0a1b` is bytes
in hex; nothing after the topic (and flags) is an empty payload. A block without `arrives` must
publish nothing; a block without `error` must not fail.

Each block runs in its own psql session (`psql -X -f -`, as a DBA would paste it), the blocks of
one file in the order they appear, in one database. After a block, the test publishes a marker
at QoS 1 and one at QoS 2 from its own session: MQTT keeps order per QoS level and pg_mqtt_pub
delivers in commit order, so once both markers are in, everything the block published is in
too, and anything beyond the expected messages is a failure. Then the next block runs.
"""
import os
import re
import subprocess
import time
from dataclasses import dataclass, field

from harness import PGBIN, scratch, wait_until

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
README = "README.md"
MARKER = "pg_mqtt_pub-docs-test/marker"
DEFAULT_WAIT = 15.0
KEYWORDS = ("arrives", "error", "needs")
NEEDS = ("pg_cron",)


def doc_files():
    """README.md, then every Markdown file under docs/ (docs/adr/ included), sorted: the order
    the examples run in."""
    found = []
    for d, _, files in os.walk(os.path.join(ROOT, "docs")):
        found += [os.path.relpath(os.path.join(d, f), ROOT) for f in files if f.endswith(".md")]
    return [README] + sorted(found)


@dataclass
class Expect:
    topic: str
    payload: object  # str pattern ("..." = any text), or bytes
    qos: int = None
    retain: bool = None
    text: str = ""

    def matches(self, m):
        if m.topic != self.topic or (self.qos is not None and m.qos != self.qos):
            return False
        if self.retain is not None and m.retain != self.retain:
            return False
        if isinstance(self.payload, bytes):
            return m.payload == self.payload
        try:
            got = m.payload.decode()
        except UnicodeDecodeError:
            return False
        pattern = ".*".join(re.escape(p) for p in self.payload.split("..."))
        return re.fullmatch(pattern, got, re.S) is not None


@dataclass
class Block:
    path: str
    line: int  # line number of the block's first SQL line
    sql: str
    arrives: list = field(default_factory=list)
    wait: float = DEFAULT_WAIT
    errors: list = field(default_factory=list)
    needs: set = field(default_factory=set)

    @property
    def where(self):
        return f"{self.path}:{self.line}"


def parse_expect(line):
    topic, _, rest = line.strip().partition(" ")
    e = Expect(topic, "", text=line.strip())
    while True:
        word, _, after = rest.partition(" ")
        if re.fullmatch(r"qos=[012]", word):
            e.qos = int(word[4:])
        elif word == "retain":
            e.retain = True
        else:
            break
        rest = after
    e.payload = bytes.fromhex(rest[2:]) if re.fullmatch(r"\\x([0-9a-f]{2})+", rest) else rest
    return e


def parse(path):
    """(blocks, problems) of one Markdown file: its ```sql blocks with their annotations, and
    every way the file breaks the rules above (a fence without a language, an annotation that
    follows no sql block, an unknown keyword, a block that does not end its last statement)."""
    lines = open(os.path.join(ROOT, path), encoding="utf-8").read().split("\n")
    blocks, problems = [], []
    i, n = 0, len(lines)
    last_sql_end = None  # index of the line after the closing fence of the latest sql block
    while i < n:
        m = re.match(r"^(\s*)(```+|~~~+)\s*(\S*)\s*$", lines[i])
        if m:
            fence, lang = m.group(2), m.group(3)
            start = i + 1
            j = start
            while j < n and not re.match(r"^\s*" + re.escape(fence) + r"\s*$", lines[j]):
                j += 1
            if not lang:
                problems.append(f"{path}:{i + 1}: a fence without a language (```sql, ```text, ```sh ...)")
            if lang == "sql":
                body = "\n".join(lines[start:j])
                blocks.append(Block(path, start + 1, body + "\n"))
                code = [re.sub(r"\s--\s.*$", "", ln).strip() for ln in lines[start:j]]
                code = [ln for ln in code if ln and not ln.startswith("--")]
                if code and not (code[-1].endswith(";") or code[-1].startswith("\\")):
                    problems.append(f"{path}:{j}: the block's last statement has no ';' (psql would not run it when pasted)")
                last_sql_end = j + 1
            else:
                last_sql_end = None
            i = j + 1
            continue
        if lines[i].lstrip().startswith("<!--"):
            k = i
            while "-->" not in lines[k] and k + 1 < n:
                k += 1
            comment = "\n".join(lines[i:k + 1]).strip()[4:]
            comment = comment[:comment.rindex("-->")] if "-->" in comment else comment
            word = re.match(r"\s*([a-z_]+)", comment)
            keyword = word.group(1) if word else ""
            attached = last_sql_end is not None and all(not ln.strip() for ln in lines[last_sql_end:i])
            if keyword in KEYWORDS or re.match(r"\s*[a-z_ 0-9]+:", comment):
                if keyword not in KEYWORDS:
                    problems.append(f"{path}:{i + 1}: unknown annotation {keyword!r} (known: {', '.join(KEYWORDS)})")
                elif not attached:
                    problems.append(f"{path}:{i + 1}: annotation {keyword!r} does not follow a ```sql block")
                else:
                    annotate(blocks[-1], comment, f"{path}:{i + 1}", problems)
                    last_sql_end = k + 1
            i = k + 1
            continue
        i += 1
    return blocks, problems


def annotate(block, comment, where, problems):
    head, _, rest = comment.partition(":")
    head = head.strip()
    if head.startswith("arrives"):
        within = re.fullmatch(r"arrives(?: within (\d+) s)?", head)
        if not within:
            problems.append(f"{where}: write 'arrives:' or 'arrives within N s:'")
            return
        if within.group(1):
            block.wait = float(within.group(1))
        block.arrives += [parse_expect(ln) for ln in rest.split("\n") if ln.strip()]
    elif head == "error":
        states = rest.split()
        bad = [s for s in states if not re.fullmatch(r"[0-9A-Z]{5}", s)]
        if bad or not states:
            problems.append(f"{where}: 'error:' takes SQLSTATEs, not {bad or 'nothing'}")
        block.errors += states
    elif head == "needs":
        for what in rest.split():
            if what not in NEEDS:
                problems.append(f"{where}: 'needs: {what}': only {', '.join(NEEDS)} is known")
            block.needs.add(what)
    else:
        problems.append(f"{where}: unknown annotation {head!r}")


def all_blocks():
    """Every example of every file, and every problem found in them."""
    blocks, problems = [], []
    for path in doc_files():
        b, p = parse(path)
        blocks += b
        problems += p
    return blocks, problems


def cron_blocks():
    """The examples that need pg_cron, in the order they run (tests/test_cron.py)."""
    blocks, _ = all_blocks()
    return [b for b in blocks if "pg_cron" in b.needs]


class DocRunner:
    """Runs examples against `cluster` (database `dbname`) and checks them with `sub`, a
    harness.Subscriber to '#' on the cluster's default broker that only the examples and the
    markers publish to."""

    def __init__(self, cluster, dbname, sub):
        self.cluster, self.dbname, self.sub = cluster, dbname, sub
        self.workdir = scratch(f"doc-examples-{cluster.port}")  # psql's cwd: \copy files land here
        self.count = 0
        psql = os.path.join(PGBIN, "psql")
        if not os.access(psql, os.X_OK):
            raise RuntimeError(f"{psql} is missing: the documentation examples run with psql")
        self.psql = psql

    def run(self, blocks):
        for b in blocks:
            self.run_block(b)

    def psql_run(self, block):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        args = [self.psql, "-X", "-q", "-h", "127.0.0.1", "-p", str(self.cluster.port), "-U", "postgres",
                "-d", self.dbname, "-v", f"ON_ERROR_STOP={0 if block.errors else 1}", "-v", "VERBOSITY=verbose",
                "-f", "-"]
        return subprocess.run(args, input=block.sql, capture_output=True, text=True, cwd=self.workdir, env=env,
                              timeout=120)

    def run_block(self, block):
        start = len(self.sub.snapshot())
        r = self.psql_run(block)
        failed = [(int(m.group(1)), m.group(2), m.group(3)) for m in
                  re.finditer(r"^psql:<stdin>:(\d+): ERROR:  ([0-9A-Z]{5}): (.*)$", r.stderr, re.M)]
        states = [s for _, s, _ in failed]
        def doc_line(k):
            return f"{block.path}:{block.line + k - 1}"
        if block.errors:
            assert states == block.errors, (
                f"{block.where}: expected the errors {block.errors}, got {states}:\n"
                + "\n".join(f"  {doc_line(k)}: {s} {msg}" for k, s, msg in failed) + f"\n{r.stderr[-2000:]}")
        else:
            assert not failed and r.returncode == 0, (
                f"{block.where}: the example failed (psql exit {r.returncode}):\n"
                + "".join(f"  {doc_line(k)}: {s} {msg}\n" for k, s, msg in failed) + r.stderr[-2000:])
        self.check_arrivals(block, start)

    def extension_installed(self):
        return bool(self.cluster.sql("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_mqtt_pub'",
                                     dbname=self.dbname))

    def check_arrivals(self, block, start):
        """Publish the markers, wait (bounded) for them and for every expected message, then
        compare what arrived with what the block says."""
        if not self.extension_installed():
            assert not block.arrives, f"{block.where}: messages expected, but pg_mqtt_pub is not installed"
            return
        self.count += 1
        token = str(self.count)
        with self.cluster.connect(self.dbname) as c:
            c.execute("SELECT mqtt_pub.mqtt_publish(%s, %s, q) FROM (VALUES (1), (2)) v(q)", (MARKER, token))

        def split():
            got = self.sub.snapshot()[start:]
            markers = {m.qos for m in got if m.topic == MARKER and m.payload == token.encode()}
            return markers, [m for m in got if m.topic != MARKER]

        def settled():
            markers, got = split()
            missing, _ = match(block.arrives, got)
            return markers == {1, 2} and not missing

        deadline = time.time() + max(block.wait, DEFAULT_WAIT)
        while not settled() and time.time() < deadline:
            time.sleep(0.02)
        markers, got = split()
        missing, extra = match(block.arrives, got)
        report = (f"\n  expected: {[e.text for e in block.arrives]}"
                  f"\n  received: {[(m.topic, m.payload[:300], m.qos, m.retain) for m in got]}")
        assert markers == {1, 2}, f"{block.where}: the markers published after the block did not arrive{report}"
        assert not missing, f"{block.where}: did not arrive: {[e.text for e in missing]}{report}"
        assert not extra, f"{block.where}: arrived but not in the block's 'arrives': {[(m.topic, m.payload[:300]) for m in extra]}{report}"

    def wait_hot(self, timeout=30.0):
        def hot():
            rows = self.cluster.sql("SELECT connected AND delivery_mode = 'hot' FROM mqtt_pub.mqtt_status() "
                                    "WHERE broker_name = 'default'", dbname=self.dbname)
            return rows and rows[0][0]
        wait_until(hot, timeout, "the default broker connected and hot")

    def reset(self, baseline_roles):
        """Undo what a file's examples created, as if the next file ran in a fresh database:
        schemas, relations, functions and types outside the extensions, named brokers, dead
        letters, roles, ALTER SYSTEM / DATABASE / ROLE settings. Fails if a message the
        examples published is still waiting in the outbox."""
        with self.cluster.connect(self.dbname) as c:
            ext = ("NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '{cls}'::pg_catalog.regclass "
                   "AND d.objid = {oid} AND d.deptype = 'e')")
            for (s,) in c.execute("SELECT nspname FROM pg_catalog.pg_namespace n WHERE nspname <> 'public' "
                                  "AND nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' AND "
                                  + ext.format(cls="pg_namespace", oid="n.oid")).fetchall():
                c.execute(f'DROP SCHEMA "{s}" CASCADE')
            kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE",
                     "S": "SEQUENCE"}
            for oid, kind in c.execute("SELECT oid::regclass::text, relkind::text FROM pg_catalog.pg_class k "
                                       "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r','p','v','m','f','S') "
                                       "AND " + ext.format(cls="pg_class", oid="k.oid")).fetchall():
                c.execute(f"DROP {kinds[kind]} IF EXISTS {oid} CASCADE")
            for (fn,) in c.execute("SELECT oid::regprocedure::text FROM pg_catalog.pg_proc p "
                                   "WHERE pronamespace = 'public'::regnamespace AND "
                                   + ext.format(cls="pg_proc", oid="p.oid")).fetchall():
                c.execute(f"DROP ROUTINE IF EXISTS {fn} CASCADE")
            for (t,) in c.execute("SELECT oid::regtype::text FROM pg_catalog.pg_type t WHERE typnamespace = 'public'::regnamespace "
                                  "AND (typtype IN ('e', 'd', 'r') OR (typtype = 'c' AND (SELECT relkind FROM pg_catalog.pg_class "
                                  "WHERE oid = t.typrelid) = 'c')) AND " + ext.format(cls="pg_type", oid="t.oid")).fetchall():
                c.execute(f"DROP TYPE IF EXISTS {t} CASCADE")
            if self.extension_installed():
                c.execute("SELECT mqtt_pub.mqtt_broker_remove(name, true) FROM mqtt_pub.brokers")
                c.execute("DELETE FROM mqtt_pub.dead_letters")
            for (r,) in c.execute("SELECT rolname FROM pg_catalog.pg_roles").fetchall():
                if r not in baseline_roles:
                    c.execute(f'DROP OWNED BY "{r}" CASCADE')
                    c.execute(f'DROP ROLE "{r}"')
            c.execute(f'ALTER DATABASE "{self.dbname}" RESET ALL')
            c.execute("ALTER ROLE ALL RESET ALL")
            if c.execute("SELECT count(*) FROM pg_catalog.pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'").fetchone()[0]:
                c.execute("ALTER SYSTEM RESET ALL")
                c.execute("SELECT pg_catalog.pg_reload_conf()")
        if self.extension_installed():
            wait_until(lambda: not self.cluster.sql("SELECT count(*) FROM mqtt_pub.outbox", dbname=self.dbname)[0][0],
                       15, "the outbox to be empty: messages of the examples still wait")
            self.wait_hot()


def match(expected, received):
    """Pair expected messages with received ones (each used once): (missing, unexpected)."""
    left = list(received)
    missing = []
    for e in expected:
        for k, m in enumerate(left):
            if e.matches(m):
                del left[k]
                break
        else:
            missing.append(e)
    return missing, left
