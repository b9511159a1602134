"""Metric names in PromQL expressions, for the deploy tests (standard library only).

names(expr) returns the identifiers of an expression that start with `prefix` (default kvpr_):
string literals are removed first (label values, regexes), then every identifier-like token
[A-Za-z_:][A-Za-z0-9_:]* is kept when it starts with the prefix. Recorded series
(level:metric:op) are returned by recorded(expr): tokens containing a colon.
"""
import re

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_TOKEN = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Grafana's variables ($worker, ${datasource}, $__rate_interval) are not metric names.
_GRAFANA_VARS = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")


def _tokens(expr):
    expr = _GRAFANA_VARS.sub(" ", _STRINGS.sub(" ", expr))
    return set(_TOKEN.findall(expr))


def names(expr, prefix="kvpr_"):
    return {t for t in _tokens(expr) if t.startswith(prefix) and ":" not in t}


def recorded(expr):
    return {t for t in _tokens(expr) if ":" in t and not t.startswith(":")}


def grafana_exprs(dashboard):
    """(where, expr) for every query of a Grafana dashboard: panel targets (rows' nested panels
    too) and query variables."""
    out = []

    def walk(panels):
        for p in panels or []:
            for t in p.get("targets", []) or []:
                if t.get("expr"):
                    out.append((f"panel '{p.get('title')}' {t.get('refId')}", t["expr"]))
            walk(p.get("panels"))

    walk(dashboard.get("panels"))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if q:
                out.append((f"variable '{v.get('name')}'", q))
    return out


def parse_exposition(text):
    """{family: type} from # TYPE lines, and the set of sample names, of a /metrics text."""
    types, samples = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return types, samples


def resolve(name, types, samples):
    """Why `name` is a series of the scrape, or None. _bucket/_sum/_count are stripped only where
    the scrape declares the base name a histogram (or summary for _sum/_count)."""
    if name in types and types[name] not in ("histogram", "summary"):
        return f"{types[name]}" + ("" if name in samples else " (declared, no sample yet)")
    for suffix, kinds in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                          ("_count", ("histogram", "summary"))):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in kinds:
            return f"{types[base]} {base}" + ("" if name in samples else " (declared, no sample yet)")
    return None
