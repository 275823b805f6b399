"""VOEvent 2.0: one ``observation`` packet per delivered match.

A packet says, in the vocabulary Virtual Observatory tools read:

- **Who**: the service's author IVORN and the time the match was delivered;
- **What**: the headline measurements as Params with units and UCDs, in one Group per source
  kind (``diaSource``; ``diaObject`` or ``ssSource`` when the alert has one) and a ``filter``
  Group (owner, name, version);
- **WhereWhen**: the ICRS position with an error radius, and the time in UTC (alerts carry MJD in
  TAI; the conversion uses ERFA, whose leap-second table is maintained with it);
- **How**: Rubin Observatory, LSST, LSSTCam and the band;
- **Why**: the filter that selected the alert and its docstring;
- **Reference**: where the full Avro packet is (cutouts are never embedded: VTP peers drop
  messages of 100 kB or more, and a packet here is a few kB).

IVORNs are ``ivo://<authority>/<user>/<filter>#<diaSourceId>``: unique per (filter, alert) and
the same on every render, so a broker that has seen a packet recognises a repeat.

The input is a :class:`Match`, plain values; :func:`match_from_entry` builds one from a user's
stream entry and :func:`render_entry` does both steps. Nothing here touches Redis or the network.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import erfa
import fastavro
from lxml import etree

from engine.alerts.schema import load_schema
from engine.alerts.wire import unframe
from engine.config import Config
from engine.errors import ConfigError

__all__ = [
    "Match",
    "VOEventSettings",
    "decode_packet",
    "entry_packet",
    "ivorn",
    "match_from_entry",
    "packet_filename",
    "packet_ivorn",
    "render",
    "render_entry",
    "renderer",
    "utc_isotime",
]

VOEVENT_NS = "http://www.ivoa.net/xml/VOEvent/v2.0"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_SCHEMA_LOCATION = f"{VOEVENT_NS} http://www.ivoa.net/xml/VOEvent/VOEvent-v2.0.xsd"

# IVOA Identifiers 2.0 authority: what brokers (Comet among them) accept.
_AUTHORITY = re.compile(r"[A-Za-z0-9][\w\-.~*'()]{2,}")
# Characters a resource key may carry as they are; anything else is percent-encoded.
_KEY_SAFE = "-._~*'()"

# Used when an alert lacks raErr/decErr: a conservative bound (LSST's astrometric error for a
# 5-sigma point source is ~0.1 arcsec), because Error2Radius is required and 0 would claim
# an exact position.
UNKNOWN_ERROR_DEG = 1.0 / 3600


@dataclass(frozen=True)
class VOEventSettings:
    """Service-wide naming: the IVOA authority and where full packets can be fetched.

    ``packet_url`` is a template with ``{authority}``, ``{diaSourceId}`` and ``{schema_id}``.
    """

    authority: str = "minibroker.local"
    packet_url: str = "ivo://{authority}/alerts#{diaSourceId}"

    def __post_init__(self) -> None:
        if not _AUTHORITY.fullmatch(self.authority):
            raise ConfigError(
                f"vo_authority {self.authority!r} is not an IVOA authority id: use letters, digits "
                "and -._~*'() (at least 3 characters), e.g. the domain your registry entry names"
            )
        try:
            self.packet_url.format(authority="a", diaSourceId=1, schema_id=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"vo_packet_url {self.packet_url!r} cannot be filled in ({exc!r}): it may use only "
                "{authority}, {diaSourceId} and {schema_id}"
            ) from None

    @classmethod
    def from_config(cls, config: Config) -> VOEventSettings:
        """The settings held in the service configuration."""
        return cls(authority=config.vo_authority, packet_url=config.vo_packet_url)

    @property
    def author_ivorn(self) -> str:
        """The IVORN naming this service as the packets' author."""
        return f"ivo://{self.authority}/minibroker"


@dataclass(frozen=True)
class Match:
    """One delivered match, as plain values.

    The headline fields (ids, position, time, band, snr, reliability) come with every stream
    entry; ``alert`` is the decoded packet when it is at hand and adds errors, fluxes and the
    ``diaObject``/``ssSource`` records. ``published`` is when the service delivered the match
    (it becomes ``Who/Date``; rendering the same match twice gives the same bytes).
    """

    user: str
    filter: str
    filter_version: str
    visit: int
    diaSourceId: int
    ra: float
    dec: float
    midpointMjdTai: float
    band: str | None = None
    diaObjectId: int | None = None
    ssObjectId: int | None = None
    snr: float | None = None
    reliability: float | None = None
    schema_id: int | None = None
    filter_description: str = ""
    published: dt.datetime | None = None
    alert: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class _Field:
    unit: str | None
    ucd: str
    doc: str


# Units as the Rubin APDB schema (lsst-sdm-schemas) gives them; a test checks they agree.
# Fluxes are flux densities, hence phot.flux.density rather than the APDB's phot.count.
_FLUX = "phot.flux.density;em.opt"
_FLUX_ERR = "stat.error;phot.flux.density;em.opt"
_FIELDS: dict[str, _Field] = {
    "diaSourceId": _Field(None, "meta.id;src", "LSST diaSource id (also the alert id)"),
    "diaObjectId": _Field(None, "meta.id;src", "LSST diaObject id"),
    "ssObjectId": _Field(None, "meta.id;src", "LSST solar-system object id"),
    "visit": _Field(None, "meta.id;obs", "Rubin visit id"),
    "detector": _Field(None, "meta.id;instr.det", "LSSTCam detector"),
    "midpointMjdTai": _Field("d", "time.epoch", "mid-exposure time, MJD (TAI)"),
    "ra": _Field("deg", "pos.eq.ra;meta.main", "right ascension (ICRS)"),
    "dec": _Field("deg", "pos.eq.dec;meta.main", "declination (ICRS)"),
    "raErr": _Field("deg", "stat.error;pos.eq.ra", "error of ra*cos(dec)"),
    "decErr": _Field("deg", "stat.error;pos.eq.dec", "error of dec"),
    "band": _Field(None, "instr.bandpass", "LSST band"),
    "psfFlux": _Field("nJy", _FLUX, "PSF flux on the difference image"),
    "psfFluxErr": _Field("nJy", _FLUX_ERR, "error of psfFlux"),
    "scienceFlux": _Field("nJy", _FLUX, "forced PSF flux on the visit image"),
    "scienceFluxErr": _Field("nJy", _FLUX_ERR, "error of scienceFlux"),
    "templateFlux": _Field("nJy", _FLUX, "forced PSF flux on the template"),
    "templateFluxErr": _Field("nJy", _FLUX_ERR, "error of templateFlux"),
    "apFlux": _Field("nJy", _FLUX, "12-pixel aperture flux on the difference image"),
    "apFluxErr": _Field("nJy", _FLUX_ERR, "error of apFlux"),
    "snr": _Field(None, "stat.snr", "detection signal-to-noise ratio"),
    "reliability": _Field(None, "stat.probability", "probability that the source is astrophysical"),
    "extendedness": _Field(None, "src.morph.param", "0 point-like ... 1 extended"),
    "nDiaSources": _Field(None, "meta.number", "diaSources associated with the object"),
    "firstDiaSourceMjdTai": _Field("d", "time.start", "time of the first diaSource, MJD (TAI)"),
    "lastDiaSourceMjdTai": _Field("d", "time.end", "time of the last diaSource, MJD (TAI)"),
    "psfFluxMean": _Field("nJy", _FLUX, "weighted mean PSF flux in this band"),
    "psfFluxMeanErr": _Field("nJy", _FLUX_ERR, "error of psfFluxMean"),
    "psfFluxNdata": _Field(None, "meta.number", "points in psfFluxMean"),
    "designation": _Field(None, "meta.id;src", "provisional designation"),
    "ephRa": _Field("deg", "pos.eq.ra;meta.modelled;pos.ephem", "predicted ra from the orbit"),
    "ephDec": _Field("deg", "pos.eq.dec;meta.modelled;pos.ephem", "predicted dec from the orbit"),
    "ephOffset": _Field(
        "arcsec", "pos.angDistance;stat.fit.omc", "observed minus predicted position"
    ),
    "ephVmag": _Field("mag", "phot.mag;em.opt.V", "predicted V magnitude"),
    "phaseAngle": _Field("deg", "pos.phaseAng", "Sun-object-observer angle"),
    "elongation": _Field("deg", "pos.phaseAng", "solar elongation"),
    "helioRange": _Field("AU", "pos.distance;pos.heliocentric", "heliocentric distance"),
    "topoRange": _Field("AU", "pos.distance", "topocentric distance"),
}

_DIA_SOURCE = (
    "diaSourceId",
    "visit",
    "detector",
    "midpointMjdTai",
    "ra",
    "dec",
    "raErr",
    "decErr",
    "band",
    "psfFlux",
    "psfFluxErr",
    "scienceFlux",
    "scienceFluxErr",
    "templateFlux",
    "templateFluxErr",
    "apFlux",
    "apFluxErr",
    "snr",
    "reliability",
    "extendedness",
)
_DIA_OBJECT = (
    "diaObjectId",
    "nDiaSources",
    "ra",
    "dec",
    "firstDiaSourceMjdTai",
    "lastDiaSourceMjdTai",
)
_PER_BAND = ("psfFluxMean", "psfFluxMeanErr", "psfFluxNdata")
_SS_SOURCE = (
    "ssObjectId",
    "designation",
    "ephRa",
    "ephDec",
    "ephOffset",
    "ephVmag",
    "phaseAngle",
    "elongation",
    "helioRange",
    "topoRange",
)


def _key_part(name: str) -> str:
    return urllib.parse.quote(name, safe=_KEY_SAFE)


def ivorn(settings: VOEventSettings, user: str, filter_name: str, dia_source_id: int) -> str:
    """``ivo://<authority>/<user>/<filter>#<diaSourceId>``: one per (filter, alert)."""
    return f"ivo://{settings.authority}/{_key_part(user)}/{_key_part(filter_name)}#{dia_source_id}"


def packet_ivorn(packet: bytes) -> str:
    """The IVORN of a rendered packet (its root element's ``ivorn`` attribute)."""
    return str(etree.fromstring(packet).get("ivorn"))


def packet_filename(packet_ivorn: str) -> str:
    """A file name for a packet, from its IVORN: ``<user>.<filter>.<diaSourceId>.xml``."""
    rest = packet_ivorn.split("://", 1)[-1].split("/", 1)[-1]
    return rest.replace("/", ".").replace("#", ".") + ".xml"


def utc_isotime(mjd_tai: float) -> str:
    """MJD (TAI) → ISO 8601 UTC with milliseconds, via ERFA (leap seconds included)."""
    utc1, utc2 = erfa.taiutc(2400000.5, mjd_tai)
    year, month, day, hmsf = erfa.d2dtf("UTC", 3, utc1, utc2)
    h, m, s, frac = (int(x) for x in hmsf.tolist())
    return f"{int(year):04d}-{int(month):02d}-{int(day):02d}T{h:02d}:{m:02d}:{s:02d}.{frac:03d}"


def _number(value: Any) -> str | None:
    """The text of a Param value, or None when it has none (null or NaN)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return None if not math.isfinite(value) else repr(value)
    return str(value)


def _param(parent: etree._Element, name: str, value: Any, spec: _Field | None = None) -> None:
    if isinstance(value, str):
        text, data_type = value, "string"
    else:
        number = _number(value)
        if number is None:
            return
        text, data_type = number, "int" if isinstance(value, int) else "float"
    attrs = {"name": name, "value": text, "dataType": data_type}
    if spec is not None:
        if spec.unit:
            attrs["unit"] = spec.unit
        attrs["ucd"] = spec.ucd
    p = etree.SubElement(parent, "Param", attrs)
    if spec is not None:
        etree.SubElement(p, "Description").text = spec.doc


def _group(
    parent: etree._Element,
    name: str,
    values: Mapping[str, Any],
    names: tuple[str, ...],
    extra: Mapping[str, tuple[str, Any]] | None = None,
) -> None:
    group = etree.Element("Group", {"name": name, "type": name})
    for key in names:
        if key in values:
            _param(group, key, values[key], _FIELDS[key])
    for key, (spec_key, value) in (extra or {}).items():
        _param(group, key, value, _FIELDS[spec_key])
    if len(group):  # the schema wants at least one Param in a Group
        parent.append(group)


def _nonzero(value: int | None) -> bool:
    return value is not None and value != 0


def _source_values(match: Match) -> dict[str, Any]:
    """diaSource values: the decoded alert's when present, the entry's headline otherwise."""
    alert = match.alert or {}
    values: dict[str, Any] = dict(alert.get("diaSource") or {})
    headline = {
        "diaSourceId": match.diaSourceId,
        "visit": match.visit,
        "ra": match.ra,
        "dec": match.dec,
        "midpointMjdTai": match.midpointMjdTai,
        "band": match.band,
        "snr": match.snr,
        "reliability": match.reliability,
    }
    for key, value in headline.items():
        if values.get(key) is None:
            values[key] = value
    return values


def _error_radius(source: Mapping[str, Any]) -> float:
    ra_err, dec_err = source.get("raErr"), source.get("decErr")
    if ra_err is None or dec_err is None or not math.isfinite(ra_err) or not math.isfinite(dec_err):
        return UNKNOWN_ERROR_DEG
    # raErr is already the error of ra*cos(dec): both are angles on the sky.
    return math.hypot(ra_err, dec_err)


def _schema_version(schema_id: int | None) -> str | None:
    return None if schema_id is None else f"{schema_id // 100}.{schema_id % 100}"


def render(match: Match, settings: VOEventSettings) -> bytes:
    """The VOEvent 2.0 packet of one match, as UTF-8 XML bytes."""
    source = _source_values(match)
    alert = match.alert or {}
    root = etree.Element(
        f"{{{VOEVENT_NS}}}VOEvent",
        {
            "version": "2.0",
            "role": "observation",
            "ivorn": ivorn(settings, match.user, match.filter, match.diaSourceId),
            f"{{{_XSI}}}schemaLocation": _SCHEMA_LOCATION,
        },
        nsmap={"voe": VOEVENT_NS, "xsi": _XSI},
    )

    who = etree.SubElement(root, "Who")
    etree.SubElement(who, "AuthorIVORN").text = settings.author_ivorn
    published = match.published or dt.datetime.now(dt.UTC)
    etree.SubElement(who, "Date").text = published.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    author = etree.SubElement(who, "Author")
    etree.SubElement(author, "shortName").text = "minibroker (LSST Simple Filtering Service)"

    what = etree.SubElement(root, "What")
    version = _schema_version(match.schema_id)
    if version is not None:
        etree.SubElement(
            what,
            "Param",
            {
                "name": "alertSchemaVersion",
                "value": version,
                "dataType": "string",
                "ucd": "meta.version",
            },
        )
    _group(what, "diaSource", source, _DIA_SOURCE)
    band = source.get("band")
    dia_object = alert.get("diaObject")
    if dia_object:
        per_band = {}
        if band:
            per_band = {f"{band}_{k}": (k, dia_object.get(f"{band}_{k}")) for k in _PER_BAND}
        _group(what, "diaObject", dia_object, _DIA_OBJECT, per_band)
    elif _nonzero(match.diaObjectId):
        _group(what, "diaObject", {"diaObjectId": match.diaObjectId}, _DIA_OBJECT)
    ss_source = alert.get("ssSource")
    if ss_source:
        _group(what, "ssSource", ss_source, _SS_SOURCE)
    elif _nonzero(match.ssObjectId):
        _group(what, "ssSource", {"ssObjectId": match.ssObjectId}, _SS_SOURCE)
    group = etree.SubElement(what, "Group", {"name": "filter", "type": "filter"})
    etree.SubElement(
        group,
        "Param",
        {
            "name": "owner",
            "value": match.user,
            "dataType": "string",
            "ucd": "meta.id;meta.curation",
        },
    )
    etree.SubElement(
        group,
        "Param",
        {
            "name": "name",
            "value": match.filter,
            "dataType": "string",
            "ucd": "meta.id;meta.software",
        },
    )
    etree.SubElement(
        group,
        "Param",
        {
            "name": "version",
            "value": match.filter_version,
            "dataType": "string",
            "ucd": "meta.version;meta.software",
        },
    )

    where = etree.SubElement(root, "WhereWhen")
    obs_data = etree.SubElement(where, "ObsDataLocation")
    etree.SubElement(obs_data, "ObservatoryLocation", {"id": "GEOSURFACE"})
    obs = etree.SubElement(obs_data, "ObservationLocation")
    etree.SubElement(obs, "AstroCoordSystem", {"id": "UTC-ICRS-TOPO"})
    coords = etree.SubElement(obs, "AstroCoords", {"coord_system_id": "UTC-ICRS-TOPO"})
    instant = etree.SubElement(etree.SubElement(coords, "Time", {"unit": "s"}), "TimeInstant")
    etree.SubElement(instant, "ISOTime").text = utc_isotime(float(source["midpointMjdTai"]))
    pos = etree.SubElement(coords, "Position2D", {"unit": "deg"})
    etree.SubElement(pos, "Name1").text = "RA"
    etree.SubElement(pos, "Name2").text = "Dec"
    value2 = etree.SubElement(pos, "Value2")
    etree.SubElement(value2, "C1").text = repr(float(source["ra"]))
    etree.SubElement(value2, "C2").text = repr(float(source["dec"]))
    etree.SubElement(pos, "Error2Radius").text = repr(_error_radius(source))

    how = etree.SubElement(root, "How")
    band_text = f" in band {band}" if band else ""
    etree.SubElement(how, "Description").text = (
        f"Vera C. Rubin Observatory, Legacy Survey of Space and Time (LSST), LSSTCam: "
        f"a difference-image source{band_text}, from the Rubin alert stream"
    )

    why = etree.SubElement(root, "Why")
    etree.SubElement(why, "Name").text = f"{match.user}/{match.filter}"
    # Without a docstring at hand (the caller could not look it up) say only what is known.
    etree.SubElement(why, "Description").text = match.filter_description or (
        f"selected by filter {match.filter} (version {match.filter_version}) of {match.user}"
    )

    etree.SubElement(root, "Description").text = (
        f"LSST alert {match.diaSourceId} selected by filter {match.user}/{match.filter} "
        f"(version {match.filter_version})"
    )
    url = settings.packet_url.format(
        authority=settings.authority, diaSourceId=match.diaSourceId, schema_id=match.schema_id
    )
    etree.SubElement(
        root,
        "Reference",
        {
            "uri": url,
            "type": "url",
            "mimetype": "application/avro",
            "meaning": "https://github.com/lsst/alert_packet",
        },
    )
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


# ---- from a stream entry -------------------------------------------------------------------

_INT = ("visit", "diaSourceId", "diaObjectId", "ssObjectId", "schema_id")
_FLOAT = ("ra", "dec", "midpointMjdTai", "snr", "reliability")


def entry_packet(fields: Mapping[bytes, bytes]) -> bytes | None:
    """The full packet (wire header + Avro datum) a stream entry delivers, if it carries one.

    The one place that knows where an entry keeps its packet.
    """
    return fields.get(b"alert") or None


def decode_packet(body: bytes) -> dict[str, Any]:
    """A full packet (Confluent wire header + Avro datum) → the alert record."""
    schema_id, datum = unframe(body)
    schema = load_schema(schema_id)
    record: Any = fastavro.schemaless_reader(io.BytesIO(datum), schema.avro, schema.avro)
    return dict(record)


def _published(entry_id: str) -> dt.datetime | None:
    """A Redis stream id starts with the milliseconds at which it was written."""
    ms = entry_id.split("-", 1)[0]
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC) if ms.isdigit() else None


def match_from_entry(
    entry_id: str,
    fields: Mapping[bytes, bytes],
    *,
    user: str,
    description: str = "",
    packet: bytes | None = None,
) -> Match:
    """A :class:`Match` from one ``kind=match`` entry of ``user``'s stream.

    ``packet`` is the full alert when the caller has it; by default it is read from the entry
    (:func:`entry_packet`) and decoded, so the packet carries fluxes and errors too.
    """
    text = {k.decode(): v.decode() for k, v in fields.items() if k != b"alert"}
    if text.get("kind", "match") != "match":
        raise ValueError(f"stream entry {entry_id} is a {text.get('kind')!r} entry, not a match")
    values: dict[str, Any] = {}
    for key in _INT:
        if text.get(key):
            values[key] = int(text[key])
    for key in _FLOAT:
        if text.get(key):
            values[key] = float(text[key])
    body = packet if packet is not None else entry_packet(fields)
    return Match(
        user=user,
        filter=text["filter"],
        filter_version=text.get("filter_version", ""),
        band=text.get("band") or None,
        filter_description=description,
        published=_published(entry_id),
        alert=decode_packet(body) if body else None,
        **values,
    )


def render_entry(
    entry_id: str,
    fields: Mapping[bytes, bytes],
    *,
    user: str,
    settings: VOEventSettings,
    description: str = "",
    packet: bytes | None = None,
) -> bytes:
    """The VOEvent packet of one ``kind=match`` stream entry (see :func:`match_from_entry`)."""
    match = match_from_entry(entry_id, fields, user=user, description=description, packet=packet)
    return render(match, settings)


def renderer(
    user: str, settings: VOEventSettings, describe: Callable[[str, str, str], str] | None = None
) -> Callable[[str, Mapping[bytes, bytes]], bytes]:
    """``render(entry_id, fields) -> bytes`` for one user's entries, as ``subscribe`` takes a
    renderer; ``describe(user, filter, version)`` supplies each filter's docstring."""

    def render_one(entry_id: str, fields: Mapping[bytes, bytes]) -> bytes:
        name = fields.get(b"filter", b"").decode()
        version = fields.get(b"filter_version", b"").decode()
        description = describe(user, name, version) if describe is not None else ""
        return render_entry(entry_id, fields, user=user, settings=settings, description=description)

    return render_one
