"""The attack filters, written for this project, each with the outcome it must have.

``expect`` is one of:

- ``"rejected:<rule>"``: refused at compile time with that rule (and a line number);
- ``"error"``, ``"timeout"``, ``"memory"``, ``"bad-result"``: a contained fault of that reason
  when run in the worker pool;
- ``"ok:<reference>"``: runs, does nothing harmful, and returns exactly the mask of the honest
  filter ``<reference>`` in :data:`HONEST` (it tried to change what others see, and could not).

``MARKER`` in a source is replaced by a path in the watched marker directory, ``PORT`` by the
watched listener's port: any success would leave a trace there.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Attack:
    name: str
    category: str
    expect: str
    body: str  # the body of ``def filter(alerts):`` (indented 4), or a whole file if it starts with '"""'

    def source(self, marker: str = "/tmp/never", port: int = 9) -> str:
        text = self.body.replace("MARKER", marker).replace("PORT", str(port))
        if text.startswith('"""'):
            return text
        body = "\n".join("    " + line for line in text.strip("\n").splitlines())
        return f'"""Attack: {self.name}."""\n\ndef filter(alerts):\n{body}\n'


def A(name: str, category: str, expect: str, body: str) -> Attack:
    return Attack(name, category, expect, body)


# Honest filters whose masks the attacks must not change (and which must keep working).
HONEST: dict[str, str] = {
    "snr": '"""Significant detections."""\n\ndef filter(alerts):\n    return alerts.diaSource.snr > 10\n',
    "quality": (
        '"""Reliable, point-like, bright enough."""\nSNR = 5\n\n'
        "def filter(alerts):\n"
        "    ds = alerts.diaSource\n"
        "    good = (ds.snr > SNR) & (fill(ds.reliability, 0) > 0.1)\n"
        "    return good & ~isnull(ds.psfFlux)\n"
    ),
    "lightcurve": (
        '"""Objects with a real history that brightened."""\n\n'
        "def filter(alerts):\n"
        "    lc = alerts.prvDiaSources.psfFlux\n"
        "    return (lc.count() >= 2) & (alerts.diaSource.psfFlux > lc.mean())\n"
    ),
    "region": (
        '"""A box on the sky, with a helper function and a loop over constants."""\n'
        "BOXES = [(0, 360, -90, 0)]\n\n"
        "def inside(ra, dec, box):\n"
        "    lo, hi, dlo, dhi = box\n"
        "    return (ra >= lo) & (ra < hi) & (dec >= dlo) & (dec < dhi)\n\n"
        "def filter(alerts):\n"
        "    ra, dec = alerts.diaSource.ra, alerts.diaSource.dec\n"
        "    hit = inside(ra, dec, BOXES[0])\n"
        "    for box in BOXES[1:]:\n"
        "        hit = hit | inside(ra, dec, box)\n"
        "    return hit\n"
    ),
    "cone": (
        '"""Within 30 degrees of a field centre."""\n\n'
        "def filter(alerts):\n"
        "    return sky.cone(alerts.diaSource.ra, alerts.diaSource.dec, 60.0, -30.0, 30.0)\n"
    ),
    "magnitude": (
        '"""Brighter than magnitude 22 in the triggering band."""\n\n'
        "def filter(alerts):\n"
        "    return mag_from_flux(alerts.diaSource.psfFlux) < 22\n"
    ),
}

_GEN = "g = (x for x in [1])\n"

ATTACKS: list[Attack] = [
    # --- escapes through frames, generators, tracebacks --------------------------------------
    A(
        "generator frame",
        "frames",
        "rejected:forbidden-attribute",
        _GEN + "return g.gi_frame.f_back.f_globals",
    ),
    A("generator code", "frames", "rejected:forbidden-attribute", _GEN + "return g.gi_code"),
    A(
        "frame builtins",
        "frames",
        "rejected:forbidden-attribute",
        _GEN + "f = g.gi_frame\nreturn f.f_builtins",
    ),
    A(
        "generator function",
        "frames",
        "rejected:no-generator",
        '"""g"""\ndef gen():\n    yield 1\n\ndef filter(alerts):\n    return True\n',
    ),
    A(
        "coroutine",
        "frames",
        "rejected:no-async",
        '"""c"""\nasync def co():\n    return 1\n\ndef filter(alerts):\n    return True\n',
    ),
    A("lambda code", "frames", "rejected:restricted", "f = lambda: 0\nreturn f.__code__"),
    A(
        "function globals",
        "frames",
        "rejected:restricted",
        "def h():\n    return 1\nreturn h.__globals__",
    ),
    A(
        "traceback frame",
        "frames",
        "rejected:no-try",
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    return e.__traceback__.tb_frame",
    ),
    A(
        "except star",
        "frames",
        "rejected:no-try",
        "try:\n    pass\nexcept* ValueError:\n    pass\nreturn True",
    ),
    A("tb_next", "frames", "rejected:forbidden-attribute", "e = ValueError()\nreturn e.tb_next"),
    A("generator send (runtime)", "frames", "error", _GEN + "g.send(None)\nreturn True"),
    A("exception args (runtime)", "frames", "error", "e = ValueError('x')\nreturn e.args"),
    A("with_traceback (runtime)", "frames", "error", "return ValueError('x').with_traceback(None)"),
    # --- format strings --------------------------------------------------------------------------
    A(
        "str.format attribute",
        "format",
        "rejected:forbidden-attribute",
        "return '{0.__class__}'.format(alerts)",
    ),
    A(
        "format_map",
        "format",
        "rejected:forbidden-attribute",
        "return '{a.gi_frame}'.format_map({'a': 1})",
    ),
    A("format builtin", "format", "rejected:forbidden-name", "return format(alerts, '')"),
    A("f-string dunder", "format", "rejected:restricted", "return f'{alerts.__class__}'"),
    A(
        "percent format of the view",
        "format",
        "ok:snr",
        "s = '%s %r' % (alerts, alerts.diaSource)\nreturn alerts.diaSource.snr > 10",
    ),
    # --- subclasses and types --------------------------------------------------------------------
    A(
        "subclasses walk",
        "subclasses",
        "rejected:restricted",
        "return ().__class__.__bases__[0].__subclasses__()",
    ),
    A("type()", "subclasses", "rejected:forbidden-name", "return type(alerts)"),
    A("object", "subclasses", "rejected:forbidden-name", "return object.__subclasses__()"),
    A("mro", "subclasses", "rejected:forbidden-attribute", "return str.mro()"),
    A(
        "class definition",
        "subclasses",
        "rejected:no-class",
        "class Mask:\n    pass\nreturn Mask()",
    ),
    A(
        "match class pattern",
        "subclasses",
        "rejected:no-match",
        "match alerts:\n    case str(real=x):\n        return x\nreturn True",
    ),
    A("str type attribute (runtime)", "subclasses", "error", "return str.maketrans('a', 'b')"),
    A("super", "subclasses", "rejected:forbidden-name", "return super()"),
    # --- builtins ---------------------------------------------------------------------------------
    A("exec", "builtins", "rejected:forbidden-name", "exec('import os')\nreturn True"),
    A("eval", "builtins", "rejected:forbidden-name", "return eval('1')"),
    A("compile", "builtins", "rejected:forbidden-name", "return compile('1', 'x', 'eval')"),
    A("getattr dunder", "builtins", "rejected:forbidden-name", "return getattr(alerts, '_store')"),
    A("__import__", "builtins", "rejected:restricted", "return __import__('os')"),
    A("__builtins__", "builtins", "rejected:restricted", "return __builtins__['open']"),
    A("globals", "builtins", "rejected:forbidden-name", "return globals()"),
    A("vars", "builtins", "rejected:forbidden-name", "return vars(alerts)"),
    A("breakpoint", "builtins", "rejected:forbidden-name", "breakpoint()\nreturn True"),
    A("SystemExit", "builtins", "rejected:forbidden-name", "raise SystemExit(0)"),
    A("exit", "builtins", "rejected:forbidden-name", "exit(0)"),
    A("print", "builtins", "rejected:forbidden-name", "print('hello')\nreturn True"),
    A("helper namespace internals (runtime)", "builtins", "error", "return sky.lookup('cone')"),
    A("iterate a function (runtime)", "builtins", "error", "for x in sqrt:\n    pass\nreturn True"),
    # --- numpy internals and memory --------------------------------------------------------------
    A(
        "np.f2py shell",
        "numpy",
        "rejected:forbidden-name",
        "np.f2py.os.system('touch MARKER')\nreturn True",
    ),
    A("numpy loadtxt", "numpy", "rejected:forbidden-name", "return numpy.loadtxt('/etc/passwd')"),
    A("array values attribute", "numpy", "rejected:restricted", "return alerts.diaSource.snr._v"),
    A(
        "ctypes data pointer",
        "numpy",
        "rejected:forbidden-attribute",
        "return alerts.diaSource.snr.ctypes.data",
    ),
    A("id for addresses", "numpy", "rejected:forbidden-name", "return id(alerts)"),
    A("memoryview", "numpy", "rejected:forbidden-name", "return memoryview(alerts)"),
    A(
        "setflags",
        "numpy",
        "rejected:forbidden-attribute",
        "alerts.diaSource.snr.setflags(write=True)\nreturn True",
    ),
    A(
        "array interface",
        "numpy",
        "rejected:restricted",
        "return alerts.diaSource.snr.__array_interface__",
    ),
    A(
        "seterrcall hook",
        "numpy",
        "rejected:forbidden-name",
        "np.seterrcall(lambda *a: None)\nreturn True",
    ),
    A(
        "column dtype internals (runtime)",
        "numpy",
        "error",
        "return alerts.diaSource.snr.dtype.encode('x')",
    ),
    # --- files, environment, network, processes --------------------------------------------------
    A(
        "open for writing",
        "files",
        "rejected:forbidden-name",
        "open('MARKER', 'w').write('x')\nreturn True",
    ),
    A(
        "read environ",
        "files",
        "rejected:forbidden-name",
        "return open('/proc/self/environ').read()",
    ),
    A(
        "import os environ",
        "files",
        "rejected:no-import",
        '"""e"""\nimport os\n\ndef filter(alerts):\n    return os.environ["REDIS_URL"]\n',
    ),
    A(
        "from import",
        "files",
        "rejected:no-import",
        '"""e"""\nfrom os import system\n\ndef filter(alerts):\n    return system("touch MARKER")\n',
    ),
    A(
        "sys.modules",
        "files",
        "rejected:forbidden-name",
        "return sys.modules['os'].system('touch MARKER')",
    ),
    A("cutouts as files (runtime)", "files", "error", "return alerts.cutoutScience"),
    A(
        "socket",
        "network",
        "rejected:no-import",
        '"""n"""\nimport socket\n\ndef filter(alerts):\n    socket.create_connection(("127.0.0.1", PORT))\n    return True\n',
    ),
    A(
        "socket via name",
        "network",
        "rejected:forbidden-name",
        "socket.create_connection(('127.0.0.1', PORT))\nreturn True",
    ),
    A(
        "subprocess",
        "processes",
        "rejected:no-import",
        '"""p"""\nimport subprocess\n\ndef filter(alerts):\n    subprocess.run(["touch", "MARKER"])\n    return True\n',
    ),
    A("fork via os", "processes", "rejected:forbidden-name", "os.fork()\nreturn True"),
    A("pickle", "processes", "rejected:forbidden-name", "return pickle.loads(b'x')"),
    # --- loops, recursion, huge numbers, strings, regex -------------------------------------------
    A("infinite loop", "cpu", "timeout", "while True:\n    pass"),
    A(
        "loop at load time",
        "cpu",
        "timeout",
        '"""l"""\nX = sum(range(10 ** 12))\n\ndef filter(alerts):\n    return True\n',
    ),
    A("huge integer power", "cpu", "timeout", "x = 7 ** (10 ** 9)\nreturn True"),
    A("long C call", "cpu", "timeout", "return max(range(10 ** 12)) > 0"),
    A(
        "busy comprehension",
        "cpu",
        "timeout",
        "n = 0\nwhile n >= 0:\n    n = sum([i for i in range(1000)])\nreturn True",
    ),
    A("deep recursion", "recursion", "error", "def f(n):\n    return f(n + 1)\nreturn f(0)"),
    A(
        "mutual recursion",
        "recursion",
        "error",
        '"""m"""\ndef a(n):\n    return b(n)\n\ndef b(n):\n    return a(n)\n\ndef filter(alerts):\n    return a(1)\n',
    ),
    A(
        "nested repr",
        "recursion",
        "error",
        "x = []\nfor i in range(100000):\n    x = [x]\nreturn str(x) == ''",
    ),
    A("int from a huge string", "numbers", "error", "return int('9' * 100000) > 0"),
    A("str of a huge integer", "numbers", "error", "return str(10 ** 100000) == ''"),
    A("list memory bomb", "memory", "memory", "x = [0] * (10 ** 10)\nreturn True"),
    A("string memory bomb", "memory", "memory", "x = 'x' * (10 ** 10)\nreturn True"),
    A("join memory bomb", "memory", "memory", "return ','.join(['x'] * (10 ** 10))"),
    A("tuple of a huge range", "memory", "memory", "return len(tuple(range(10 ** 10))) > 0"),
    A(
        "regex module",
        "regex",
        "rejected:no-import",
        '"""r"""\nimport re\n\ndef filter(alerts):\n    return re.match("(a+)+$", "a" * 40 + "b") is None\n',
    ),
    A("regex by name", "regex", "rejected:forbidden-name", "return re.compile('(a+)+$')"),
    # --- shared state and the batch ---------------------------------------------------------------
    A("global write", "state", "rejected:no-global", "global SEEN\nSEEN = 1\nreturn True"),
    A(
        "nonlocal write",
        "state",
        "rejected:no-nonlocal",
        "x = 1\ndef f():\n    nonlocal x\n    x = 2\nf()\nreturn True",
    ),
    A(
        "assign a column attribute",
        "state",
        "error",
        "c = alerts.diaSource.snr\nc.dtype = 'bool'\nreturn True",
    ),
    A("assign into the view", "state", "error", "alerts['diaSource.snr'] = 0\nreturn True"),
    A("assign into a group", "state", "error", "alerts.diaSource['snr'] = 0\nreturn True"),
    A(
        "set a group attribute",
        "state",
        "error",
        "alerts.diaSource.snr = alerts.diaSource.snr * 0\nreturn True",
    ),
    A("delete", "state", "rejected:no-del", "del alerts.diaSource\nreturn True"),
    A("change a shared tuple (runtime)", "state", "error", "BANDS.append('q')\nreturn True"),
    A(
        "in-place add on a column",
        "state",
        "ok:snr",
        "c = alerts.diaSource.snr\nc += 1000\nc -= 1000\nreturn alerts.diaSource.snr > 10",
    ),
    A(
        "mutate a copy",
        "state",
        "ok:snr",
        "v = alerts.diaSource.snr.tolist()\nv[0] = 1e9\nreturn alerts.diaSource.snr > 10",
    ),
    A(
        "fill does not write",
        "state",
        "ok:quality",
        "alerts.diaSource.reliability.fill(1)\nalerts.diaSource.psfFlux.fill(0)\n"
        "ds = alerts.diaSource\nreturn (ds.snr > 5) & (fill(ds.reliability, 0) > 0.1) & ~isnull(ds.psfFlux)",
    ),
    A(
        "module state across visits",
        "state",
        "ok:all",
        '"""s"""\nSEEN = []\n\ndef filter(alerts):\n    SEEN.append(1)\n    return len(SEEN) == 1\n',
    ),
    # --- malformed results ------------------------------------------------------------------------
    A("list of booleans", "result", "bad-result", "return [True] * len(alerts)"),
    A("integer", "result", "bad-result", "return 1"),
    A("None", "result", "bad-result", "return None"),
    A("float column", "result", "bad-result", "return alerts.diaSource.snr"),
    A("lightcurve column", "result", "bad-result", "return alerts.prvDiaSources.psfFlux > 0"),
    A("a function", "result", "bad-result", "return sqrt"),
    A("a generator", "result", "bad-result", "return (x for x in [True])"),
    A("a dict", "result", "bad-result", "return {'mask': True}"),
    A("string", "result", "bad-result", "return 'True'"),
    A("no filter function", "result", "rejected:entry-point", '"""nothing"""\nX = 1\n'),
    # --- hostile source text ----------------------------------------------------------------------
    A("deep nesting", "source", "rejected:too-deep", "return " + "-" * 150 + "1 > 0"),
    A(
        "huge file",
        "source",
        "rejected:too-large",
        '"""big"""\n' + "X = 1\n" * 20000 + "def filter(alerts):\n    return True\n",
    ),
    A("bytes literal", "source", "rejected:no-bytes", "return b'\\x00' == b''"),
    A("syntax error", "source", "rejected:syntax", "return (("),
]


class Outside:
    """What an attack could have touched outside its process."""

    def __init__(self, marker_dir: Path, listener: socket.socket):
        self.marker_dir = marker_dir
        self.listener = listener
        self.port = listener.getsockname()[1]

    def connections(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def assert_untouched(self) -> None:
        assert list(self.marker_dir.iterdir()) == [], "an attack created a file"
        assert self.connections() == 0, "an attack connected to the listener"


# --- the helpers of issue 12: each new helper as a way in (appended; owner: lang) ---------------
_REFINE = '"""r"""\ndef filter(alerts):\n    return True\n\ndef refine(alert):\n    img = alert["cutoutDifference"]\n'
ATTACKS += [
    A("trig function globals", "helpers", "rejected:restricted", "return sin.__globals__"),
    A(
        "wrapped helper original",
        "helpers",
        "rejected:restricted",
        "return sky.galactic_latitude.__wrapped__",
    ),
    A(
        "record null test on the store",
        "helpers",
        "rejected:restricted",
        "return isnull(alerts._store)",
    ),
    A(
        "moments result class",
        "helpers",
        "rejected:restricted",
        _REFINE + "    return img.centroid().__class__\n",
    ),
    A(
        "trig result internals (runtime)",
        "helpers",
        "error",
        "return sin(alerts.diaSource.ra).base is None",
    ),
    A("trig on the view (runtime)", "helpers", "error", "return cos(alerts) > 0"),
    A(
        "number-form result attribute (runtime)",
        "helpers",
        "error",
        "return sky.galactic_latitude(1.0, 2.0).hex() == ''",
    ),
    A(
        "record null mask internals (runtime)",
        "helpers",
        "error",
        "return isnull(alerts.diaObject).data is None",
    ),
    A(
        "thin result internals (runtime)",
        "helpers",
        "error",
        "return thin(alerts.history('psfFlux'), 0.5).items is None",
    ),
    A("thin on the view (runtime)", "helpers", "error", "return thin(alerts, 1.0).count() > 0"),
    A(
        "thin result made writable (runtime)",
        "helpers",
        "error",
        "lc = thin(alerts.prvDiaSources.psfFlux, 0.5)\nlc.count = None\nreturn True",
    ),
    A(
        "thin shares no state with others",
        "helpers",
        "ok:lightcurve",
        "lc = alerts.prvDiaSources.psfFlux\nfor gap in (0.0, 1.0, 1e9):\n    thin(lc, gap).count()\n"
        "return (lc.count() >= 2) & (alerts.diaSource.psfFlux > lc.mean())",
    ),
    A(
        "rate_between option as an object (runtime)",
        "helpers",
        "error",
        "ds = alerts.diaSource\nreturn rate_between(ds.psfFlux, ds.midpointMjdTai, 0.0, 0.0, equal_times=alerts) > 0",
    ),
    A(
        "image NaN option as an object (runtime)",
        "helpers",
        "error",
        _REFINE + "    return img.median(nan=alert) > 0\n",
    ),
    A(
        "image moments threshold as an object (runtime)",
        "helpers",
        "error",
        _REFINE + "    return img.elongation(threshold=img) > 0\n",
    ),
    A("cutout helper code", "helpers", "rejected:restricted", "return cutout_centroid.__code__"),
    A(
        "cutout helper on a foreign name (runtime)",
        "helpers",
        "error",
        "return cutout_elongation(alerts, alerts) > 1",
    ),
    A(
        "cutout helper result internals (runtime)",
        "helpers",
        "error",
        "return cutout_median(alerts).base is None",
    ),
    A(
        "cutout helper on a record's internals (runtime)",
        "helpers",
        "error",
        "return cutout_median(alerts.diaSource) > 0",
    ),
    A(
        "hypot with the view on a lightcurve (runtime)",
        "helpers",
        "error",
        "return hypot(alerts.prvDiaSources.psfFlux, alerts).count() > 0",
    ),
    A(
        "atan2 result internals (runtime)",
        "helpers",
        "error",
        "return atan2(alerts.diaSource.dec, 1.0).flags is None",
    ),
    A("degrees of a function (runtime)", "helpers", "error", "return degrees(sqrt) > 0"),
    A(
        "moments tuple internals (runtime)",
        "helpers",
        "error",
        _REFINE
        + "    m = img.second_moments()\n    return m.count(0.0) >= 0 and img.flags is None\n",
    ),
]
