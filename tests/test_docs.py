"""The documentation runs as written: every ```sql block of README.md and docs/**/*.md, against a
real cluster with pg_mqtt_pub, a real mosquitto and a real MQTT subscriber, checking what
arrives (annotations and mechanism: tests/doc_examples.py; for writers: docs/development.md).

* One cluster and one broker for all files; the publishing database is `postgres`, as in the
  README's configuration step. README.md runs first, on a database without the extension (its
  step 3 is `CREATE EXTENSION`); every other file starts with the extension installed. After each
  file, what its examples created is dropped again (tables, functions, schemas, roles, named
  brokers, dead letters, settings), so a file that uses a table it does not create fails.
* docs/adr/ is scanned like the rest of docs/: it has no ```sql block today, and one added there
  runs too. Nothing is left out silently.
* Blocks marked `<!-- needs: pg_cron -->` run in tests/test_cron.py, with Debian's pg_cron, on
  the PostgreSQL versions that have it (scripts/test.sh runs that file on 15 and 17 only); here
  they are counted, not run.
* Besides the examples: docs/settings.md's table against pg_settings (name, default, context),
  every function of the extension with its arguments and return type in docs/reference.md, and
  every column of its tables, views and mqtt_status() in the section that documents it.
"""
import os
import re

import pytest

import doc_examples as dx
from harness import Broker, Cluster, Subscriber, port, worker_settings

DB = "postgres"
FILES = dx.doc_files()


@pytest.fixture(scope="module")
def scene():
    broker = Broker("docs", port()).start()
    sub = cluster = None
    try:
        sub = Subscriber(broker.port)
        cluster = Cluster("docs", port(), worker_settings(DB, broker.port)).start()
        roles = {r for (r,) in cluster.sql("SELECT rolname FROM pg_catalog.pg_roles")}
        yield dx.DocRunner(cluster, DB, sub), roles
    finally:
        if sub:
            sub.close()
        if cluster:
            cluster.stop_if_running()
        broker.stop_if_running()


def test_every_example_is_annotated_by_the_rules():
    _, problems = dx.all_blocks()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", FILES)
def test_examples_run_as_written(scene, path):
    runner, roles = scene
    blocks, problems = dx.parse(path)
    assert not problems, "\n".join(problems)
    if path == dx.README:
        assert not runner.extension_installed(), "README.md runs first, on a database without the extension"
    else:
        runner.cluster.sql("CREATE EXTENSION IF NOT EXISTS pg_mqtt_pub", dbname=DB)
        runner.wait_hot()
    try:
        runner.run([b for b in blocks if not b.needs])
    finally:
        runner.reset(roles)


def test_the_pg_cron_examples_are_run_by_test_cron():
    """They are not run here (pg_cron is not installed on every version): tests/test_cron.py runs
    dx.cron_blocks() with the same runner. They must exist, and be exactly the marked ones."""
    blocks, _ = dx.all_blocks()
    cron = [b for b in blocks if "pg_cron" in b.needs]
    assert cron, "the README's pg_cron example is gone: tests/test_cron.py would run nothing"
    assert [b.where for b in dx.cron_blocks()] == [b.where for b in cron]


# ---- the reference against the catalog ---------------------------------------------------------

def doc(path):
    return open(os.path.join(dx.ROOT, path), encoding="utf-8").read()


def section(text, heading_has):
    """The text under every heading that contains `heading_has`, up to the next heading of the
    same or a higher level."""
    out, lines = [], text.split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^(#+) ", line)
        if m and heading_has in line:
            level = len(m.group(1))
            j = i + 1
            while j < len(lines) and not (re.match(r"^(#+) ", lines[j]) and len(re.match(r"^(#+) ", lines[j]).group(1)) <= level):
                j += 1
            out.append("\n".join(lines[i:j]))
    return "\n".join(out)


def in_base_unit(text, unit):
    """A default as the docs write it ('30s', '1MB', '100') in the setting's unit."""
    m = re.fullmatch(r"(-?\d+)\s*(B|kB|MB|GB|ms|s|min)?", text)
    if not m:
        return text
    n, u = int(m.group(1)), m.group(2) or unit
    scale = {"": 1, "B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "ms": 1, "s": 1000, "min": 60000}
    return n * scale[u] // scale[unit]


def test_settings_md_matches_pg_settings(scene):
    runner, _ = scene
    rows = runner.cluster.sql("SELECT name, boot_val, coalesce(unit, ''), context, vartype FROM pg_catalog.pg_settings "
                              "WHERE name LIKE 'pg_mqtt_pub.%' ORDER BY name")
    documented = {}
    for m in re.finditer(r"^\| `(pg_mqtt_pub\.[a-z_]+)` \| `([^`]*)` \| (\w+) \|", doc("docs/settings.md"), re.M):
        documented[m.group(1)] = (m.group(2), m.group(3))
    wrong = []
    for name, boot, unit, context, vartype in rows:
        if name not in documented:
            wrong.append(f"{name}: not in docs/settings.md's table")
            continue
        default, ctx = documented.pop(name)
        default = "" if default == "''" else default
        if vartype in ("integer", "real"):
            ok = in_base_unit(default, unit) == int(boot)
        else:
            ok = default == boot
        if not ok:
            wrong.append(f"{name}: default {default!r} in docs/settings.md, {boot!r} {unit} in pg_settings")
        if ctx != context:
            wrong.append(f"{name}: context {ctx!r} in docs/settings.md, {context!r} in pg_settings")
    wrong += [f"{name}: in docs/settings.md but not a setting" for name in documented]
    assert not wrong, "\n".join(wrong)


PROPERTIES = ["content_type", "message_expiry", "response_topic", "correlation_data", "user_properties", "payload_format"]
# called by the extension's own code only (docs/SECURITY.md lists them); trigger functions are
# named in docs/privileges.md
INTERNAL = {"mqtt_pub.broker_add_as_owner", "mqtt_pub.broker_slot_busy", "mqtt_pub.brokers_changed",
            "mqtt_pub.dead_letter_outbox", "mqtt_pub.event_trigger", "mqtt_pub.resultset_trigger",
            "mqtt_pub.topic_rights_changed", "mqtt_pub.require_publish_right_of",
            "mqtt_pub.replay_dead_letters_as_owner"}


def signatures(text):
    """Every signature in a ```text block of the reference: 'name(args) → result', whitespace
    folded."""
    out = []
    for block in re.findall(r"```text\n(.*?)\n```", text, re.S):
        folded = " ".join(block.split())
        out += re.findall(r"((?:mqtt_pub\.)?\w+\(.*?\) → [^→]+?)(?= (?:mqtt_pub\.)?\w+\(|$)", folded)
    return out


def test_every_function_is_documented_with_its_arguments_and_result(scene):
    runner, _ = scene
    runner.cluster.sql("CREATE EXTENSION IF NOT EXISTS pg_mqtt_pub", dbname=DB)
    rows = runner.cluster.sql(
        "SELECT CASE WHEN n.nspname = 'mqtt_pub' THEN 'mqtt_pub.' ELSE '' END || p.proname, "
        "coalesce(p.proargnames[1:p.pronargs], '{}'), pg_catalog.pg_get_function_result(p.oid) "
        "FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
        "JOIN pg_catalog.pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e' "
        "JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_mqtt_pub' ORDER BY 1", dbname=DB)
    sigs = signatures(doc("docs/reference.md")) + signatures(doc("docs/monitoring.md"))
    everything = "\n".join(doc(p) for p in dx.doc_files())
    wrong = []
    for name, args, result in rows:
        if name in INTERNAL:
            if name not in everything:
                wrong.append(f"{name}: internal, but named nowhere in docs/")
            continue
        short = name.removeprefix("mqtt_pub.")
        mine = [s for s in sigs if re.match(rf"(mqtt_pub\.)?{re.escape(short)}\(", s)]
        if not mine:
            wrong.append(f"{name}: no signature 'name(...) → result' in docs/reference.md or docs/monitoring.md")
            continue
        fits = False
        for s in mine:
            head, _, ret = s.rpartition(" → ")
            needed = [a for a in args if not ("<properties>" in head and a in PROPERTIES)]
            if all(re.search(rf"\b{a}\b", head) for a in needed) and ret.strip().lower() == result.lower():
                fits = True
        if not fits:
            wrong.append(f"{name}({', '.join(args)}) → {result}: the documented signature differs: {mine}")
    assert not wrong, "\n".join(wrong)


def test_every_column_is_documented(scene):
    runner, _ = scene
    runner.cluster.sql("CREATE EXTENSION IF NOT EXISTS pg_mqtt_pub", dbname=DB)
    objects = {
        "mqtt_pub.outbox": "docs/reference.md", "mqtt_pub.dead_letters": "docs/reference.md",
        "mqtt_pub.triggers": "docs/reference.md", "mqtt_pub.broker_list": "docs/reference.md",
        "mqtt_pub.outbox_summary": "docs/monitoring.md", "mqtt_pub.dead_letter_summary": "docs/monitoring.md",
        "mqtt_pub.installed_in": "docs/reference.md", "mqtt_pub.topic_rights": "docs/reference.md",
        "mqtt_pub.topic_grants": "docs/reference.md", "mqtt_pub.trigger_setters": "docs/reference.md",
    }
    wrong = []
    relations = {r for (r,) in runner.cluster.sql(
        "SELECT 'mqtt_pub.' || relname FROM pg_catalog.pg_class WHERE relnamespace = 'mqtt_pub'::regnamespace "
        "AND relkind IN ('r', 'v') AND relname <> 'brokers'", dbname=DB)}
    wrong += [f"{r}: a table or view the test does not know: document it and add it here" for r in relations - set(objects)]
    for obj, path in objects.items():
        cols = [c for (c,) in runner.cluster.sql(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", (obj,), dbname=DB)]
        text = section(doc(path), f"`{obj}`")
        if not text:
            wrong.append(f"{obj}: no heading with `{obj}` in {path}")
        wrong += [f"{obj}.{c}: not in its section of {path}" for c in cols if f"`{c}`" not in text]
    cols = runner.cluster.sql("SELECT unnest(proargnames[pronargs + 1:]) FROM pg_catalog.pg_proc "
                              "WHERE oid = 'mqtt_pub.mqtt_status'::regproc", dbname=DB)
    text = section(doc("docs/monitoring.md"), "`mqtt_status()`")
    wrong += [f"mqtt_status().{c}: not in docs/monitoring.md's mqtt_status() section" for (c,) in cols if f"`{c}`" not in text]
    cols = runner.cluster.sql("SELECT unnest(proargnames) FROM pg_catalog.pg_proc "
                              "WHERE oid = 'mqtt_pub.mqtt_status_all'::regproc", dbname=DB)
    text = section(doc("docs/monitoring.md"), "`mqtt_pub.mqtt_status_all()`")
    wrong += [f"mqtt_status_all().{c}: not in its docs/monitoring.md section" for (c,) in cols if f"`{c}`" not in text]
    assert not wrong, "\n".join(wrong)


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_the_documents_resolve():
    wrong = []
    for path in dx.doc_files():
        text = re.sub(r"```.*?```", "", doc(path), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(os.path.join(dx.ROOT, dest)):
                wrong.append(f"{path}: link to {target}: no such file")
            elif anchor and dest.endswith(".md"):
                anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", doc(dest), flags=re.S), re.M)}
                if anchor not in anchors:
                    wrong.append(f"{path}: link to {target}: no such heading in {dest}")
    assert not wrong, "\n".join(wrong)
