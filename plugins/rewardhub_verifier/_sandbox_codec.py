"""The data-only value encoding that crosses the boundary between the solution and the test process.

The solution's process (untrusted) and the test process (trusted) share no memory: a test's call of a solution
function travels as a JSON line of *data*, and so does the return value or the exception. Decoding builds
only exact builtin values (``int``, ``float``, ``bool``, ``None``, ``str``, ``bytes``, ``bytearray``,
``list``, ``tuple``, ``dict``, ``set``, ``frozenset``, ``complex``), so no object of the solution's making,
no subclass with an ``__eq__`` that always says yes, and no patched module can reach the comparison. Anything
else cannot cross: the encoder raises :class:`CrossingError` and the call fails with a message naming the type.

Format: ``None``/``bool``/``float``/``str`` and ints below :data:`BIG_INT_DIGITS` digits are plain JSON; every
container is a tagged list, so a bare JSON list is always a tag: ``["l", [...]]`` list, ``["t", [...]]`` tuple,
``["s", [...]]`` set, ``["f", [...]]`` frozenset, ``["d", [[k, v], ...]]`` dict (any hashable keys, order
kept), ``["b", "<hex>"]`` bytes, ``["B", "<hex>"]`` bytearray, ``["c", re, im]`` complex, ``["i", "<hex>"]``
a big int (base 16 has no str-conversion digit limit). Depth and size are capped on both sides.

Shipped as source text with the other ``_sandbox_*`` parts (stdlib only); the host imports it too.
"""

try:  # the C parts of json, used directly: json's Python layer costs more than the encoding of a small message
    from _json import encode_basestring_ascii as _c_ascii
    from _json import make_encoder as _c_make_encoder
    from _json import make_scanner as _c_make_scanner
except ImportError:  # pragma: no cover - CPython always has _json
    _c_make_encoder = _c_make_scanner = None

MAX_DEPTH = 100
MAX_NODES = 2_000_000
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
BIG_INT_DIGITS = 4000


class CrossingError(Exception):
    """A value cannot cross the sandbox boundary (unsupported type, too deep, too large, malformed)."""


def _type_name(value):
    t = type(value)
    module = getattr(t, "__module__", "") or ""
    name = getattr(t, "__qualname__", None) or getattr(t, "__name__", "?")
    return name if module in ("builtins", "") else f"{module}.{name}"


_BIG = 10 ** 18
_PLAIN = frozenset((str, float, bool, type(None)))  # (int apart: big ones are tagged)
_TAGS = {list: "l", tuple: "t", set: "s", frozenset: "f"}


_FLAT_TYPES = frozenset((int, *_PLAIN))


def _flat(items):
    """Whether every item is a plain JSON scalar (what encode and decode pass through unchanged).

    At C speed for the common cases (all ints: a ``list(range(1000))``; no ints at all); item by item otherwise.
    """
    types = set(map(type, items))
    if not types <= _FLAT_TYPES:
        return False
    if int not in types:
        return True
    if len(types) == 1:
        return max(map(abs, items)) < _BIG
    return max(abs(x) for x in items if type(x) is int) < _BIG


def encode(value, what="value"):
    """``value`` as JSON-able data; raises :class:`CrossingError` for anything outside the format."""
    count = [0]

    def enc(v, depth):
        count[0] += 1
        if count[0] > MAX_NODES:
            raise CrossingError(f"{what} is too large to cross the sandbox boundary (over {MAX_NODES} items)")
        if depth > MAX_DEPTH:
            raise CrossingError(f"{what} is nested too deeply (or is cyclic) to cross the sandbox boundary")
        t = type(v)
        if v is None or t is bool or t is str or t is float:
            return v
        if t is int:
            if -(10 ** 18) < v < 10 ** 18 or len(format(v, "x")) * 1.21 < BIG_INT_DIGITS:
                return v
            return ["i", format(v, "x")]
        if t is list or t is tuple or t is set or t is frozenset:
            items = list(v)
            if depth < MAX_DEPTH and _flat(items):  # fast path, same output: flat scalars (a list(range(1000)))
                count[0] += len(items)
                if count[0] > MAX_NODES:
                    raise CrossingError(f"{what} is too large to cross the sandbox boundary (over {MAX_NODES} "
                                        f"items)")
                return [_TAGS[t], items]
            return [_TAGS[t], [enc(x, depth + 1) for x in items]]
        if t is dict:
            return ["d", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]]
        if t is bytes:
            return ["b", v.hex()]
        if t is bytearray:
            return ["B", v.hex()]
        if t is complex:
            return ["c", v.real, v.imag]
        raise CrossingError(f"{what} of type {_type_name(v)} cannot cross the sandbox boundary")

    return enc(value, 0)


def decode(data):
    """Exact builtin values from :func:`encode`'s output; raises :class:`CrossingError` on anything malformed."""
    count = [0]

    def dec(d, depth):
        count[0] += 1
        if count[0] > MAX_NODES or depth > MAX_DEPTH:
            raise CrossingError("value too large or too deep")
        t = type(d)
        if d is None or t is bool or t is str or t is float or t is int:
            return d
        if t is not list or not d or type(d[0]) is not str:
            raise CrossingError(f"malformed value ({type(d).__name__})")
        tag = d[0]
        if tag in ("l", "t", "s", "f") and len(d) == 2 and type(d[1]) is list:
            if _flat(d[1]) and depth < MAX_DEPTH:  # fast path (same result): only scalars inside
                count[0] += len(d[1])
                if count[0] > MAX_NODES:
                    raise CrossingError("value too large or too deep")
                items = list(d[1])
            else:
                items = [dec(x, depth + 1) for x in d[1]]
            if tag == "l":
                return items
            if tag == "t":
                return tuple(items)
            try:
                return set(items) if tag == "s" else frozenset(items)
            except TypeError as exc:
                raise CrossingError(f"malformed set: {exc}") from None
        if tag == "d" and len(d) == 2 and type(d[1]) is list:
            out = {}
            for pair in d[1]:
                if type(pair) is not list or len(pair) != 2:
                    raise CrossingError("malformed dict")
                try:
                    out[dec(pair[0], depth + 1)] = dec(pair[1], depth + 1)
                except TypeError as exc:
                    raise CrossingError(f"malformed dict key: {exc}") from None
            return out
        if tag in ("b", "B", "i") and len(d) == 2 and type(d[1]) is str:
            try:
                if tag == "i":
                    return int(d[1], 16)
                raw = bytes.fromhex(d[1])
            except ValueError:
                raise CrossingError("malformed bytes or int") from None
            return raw if tag == "b" else bytearray(raw)
        if tag == "c" and len(d) == 3 and all(type(x) in (float, int) and type(x) is not bool for x in d[1:]):
            return complex(float(d[1]), float(d[2]))
        raise CrossingError(f"malformed value (tag {tag[:20]!r})")

    return dec(data, 0)


def _not_serialisable(o):
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


class _ScanContext:
    """What ``json.JSONDecoder()`` gives its C scanner: the defaults of ``json.loads``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
    memo = {}


_scan = _c_make_scanner(_ScanContext()) if _c_make_scanner is not None else None
_JSON_SPACE = " \t\n\r"


def dumps(obj):
    """One ASCII JSON line (no newline inside: strings are escaped), NaN and infinities allowed.

    Exactly ``json.dumps(obj, separators=(",", ":"))`` (circular check included), through json's C encoder
    without the Python layer around it (a new ``JSONEncoder`` and its ``iterencode`` per call).
    """
    if _c_make_encoder is None:  # pragma: no cover
        import json

        return json.dumps(obj, separators=(",", ":"))
    return "".join(_c_make_encoder({}, _not_serialisable, _c_ascii, None, ":", ",", False, False, True)(obj, 0))


def _fast_loads(line):
    """``json.loads(line)`` for a UTF-8 line, through json's C scanner; None where that does not apply."""
    if _scan is None:
        return None
    try:
        text = line if type(line) is str else line.decode("utf-8", "surrogatepass")
        start = len(text) - len(text.lstrip(_JSON_SPACE))
        value, end = _scan(text, start)
    except Exception:  # malformed, or not UTF-8: json.loads decides (and says why)
        return None
    if text[end:].strip(_JSON_SPACE):
        return None
    return (value,)


def loads(line):
    """Parse one line; any failure (syntax, size, nesting) is a :class:`CrossingError`.

    The same values as ``json.loads``: its C scanner with its defaults, straight; anything that scanner does
    not accept as a whole line goes to ``json.loads`` itself, for its verdict.
    """
    if len(line) > MAX_MESSAGE_BYTES:
        raise CrossingError("message too large")
    try:
        got = _fast_loads(line)
        if got is not None:
            return got[0]
        import json

        return json.loads(line)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise CrossingError(f"malformed message: {type(exc).__name__}") from None
