"""``--prompts``: the classes of a concept run and the phrases that find each, parsed once into an ``Ontology``.

Text forms (the CLI, a YAML string, ``state.json``)::

    person, bicycle, traffic light              three classes, each found by its own name
    person: man, woman, child; bike: bicycle    two classes, found by several phrases each
    helmet@0.6, person                          a phrase's own confidence threshold (else the run's --conf)
    person: man@0.4, woman; car                 groups mixed: ';' separates groups, a group with ':' is one
                                                class and its phrases, one without is a list of classes

A YAML ``prompts:`` may also be a list (one class per entry, each a text as above without ``;``) or a mapping
``class: phrase | "phrase, phrase" | [phrase, ...]``. Class ids follow the order given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.errors import SamlabelError

#: Characters that structure the text form; a class name or phrase cannot contain them.
_SYNTAX = ",;:@"


@dataclass(frozen=True)
class Phrase:
    """One text prompt.

    Attributes:
        text: what the model is asked for ("man").
        class_id: the class its instances land in.
        threshold: its own confidence threshold in [0, 1]; ``None`` = the run's ``--conf``.
    """

    text: str
    class_id: int
    threshold: float | None = None

    def __str__(self) -> str:
        return self.text if self.threshold is None else f"{self.text}@{self.threshold:g}"


@dataclass(frozen=True)
class Ontology:
    """The classes of a concept run (``names``, in class-id order) and the phrases that find them.

    Every class has at least one phrase; a phrase belongs to exactly one class (the same text twice is refused).
    """

    names: tuple[str, ...]
    phrases: tuple[Phrase, ...]

    @property
    def texts(self) -> list[str]:
        """The phrases' texts, in order: what a concept model (or an open-vocabulary detector) is asked for."""
        return [p.text for p in self.phrases]

    def phrases_of(self, class_id: int) -> list[Phrase]:
        return [p for p in self.phrases if p.class_id == class_id]

    def thresholds(self, conf: float) -> list[float]:
        """Each phrase's threshold, ``conf`` where it has none of its own."""
        return [conf if p.threshold is None else p.threshold for p in self.phrases]

    def __str__(self) -> str:
        """The canonical text form (``parse`` reads it back to an equal ontology)."""
        groups = []
        for c, name in enumerate(self.names):
            phrases = self.phrases_of(c)
            if len(phrases) == 1 and phrases[0].text == name:
                groups.append(str(phrases[0]))
            else:
                groups.append(f"{name}: " + ", ".join(map(str, phrases)))
        return "; ".join(groups)

    @classmethod
    def parse(cls, value: str | Sequence | Mapping | Ontology) -> Ontology:
        """The ontology of a ``--prompts`` text, a YAML list or mapping (see the module doc).

        Raises:
            SamlabelError: in one line, the offending entry and the expected form.
        """
        if isinstance(value, Ontology):
            return value
        groups: list[tuple[str | None, list[str]]] = []  # (class name or None: each phrase its own class, phrases)
        if isinstance(value, str):
            for group in value.split(";"):
                if not group.strip():
                    continue
                name, colon, rest = group.partition(":")
                groups.append((name, _split(rest, group)) if colon else (None, _split(group, group)))
        elif isinstance(value, Mapping):
            for name, phrases in value.items():
                if phrases is None:
                    phrases = [str(name)]
                elif isinstance(phrases, str):
                    phrases = _split(phrases, f"{name}: {phrases}")
                elif not isinstance(phrases, Sequence) or not all(isinstance(p, str) for p in phrases):
                    raise SamlabelError(
                        f"prompts: class {name!r}: expected a phrase or a list of phrases, got {phrases!r}"
                    )
                groups.append((str(name), list(phrases)))
        elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
            for entry in value:
                name, colon, rest = entry.partition(":")
                if ";" in entry:
                    raise SamlabelError(f"prompts: list entry {entry!r}: one class per entry (no ';')")
                groups.append((name, _split(rest, entry)) if colon else (None, [entry]))
        else:
            raise SamlabelError(f"prompts: expected a text, a list or a mapping, got {type(value).__name__}")
        return cls._build(groups)

    @classmethod
    def _build(cls, groups: list[tuple[str | None, list[str]]]) -> Ontology:
        names: list[str] = []
        phrases: list[Phrase] = []
        for name, entries in groups:
            if name is not None:
                name = _name(name)
                if not entries:
                    raise SamlabelError(f"prompts: class {name!r} has no phrases; write '{name}: phrase, ...'")
                names.append(name)
            for entry in entries:
                text, threshold = _phrase(entry)
                if name is None:
                    names.append(text)
                if text in (p.text for p in phrases):
                    raise SamlabelError(f"prompts: phrase {text!r} given twice; each phrase finds one class")
                phrases.append(Phrase(text=text, class_id=len(names) - 1, threshold=threshold))
        if not names:
            raise SamlabelError("prompts: no classes given; e.g. --prompts 'person, bicycle'")
        seen = set()
        for n in names:
            if n in seen:
                raise SamlabelError(f"prompts: class {n!r} given twice; list its phrases once: '{n}: a, b'")
            seen.add(n)
        return cls(names=tuple(names), phrases=tuple(phrases))


def parse_optional(value: object) -> Ontology | None:
    """``Settings.prompts``: ``None`` (or an empty text or list) stays ``None``; anything else is parsed."""
    if value is None or (isinstance(value, (str, list, tuple, dict)) and not value):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return Ontology.parse(value)  # type: ignore[arg-type]


def vocabulary(settings) -> Ontology | None:
    """The ontology of an open-vocabulary model (SAM 3, YOLOE, YOLO-World): ``--prompts``, or ``--classes`` (its
    synonym there: each name a class found by that name); ``None`` when neither is given.

    Raises:
        SamlabelError: both given.
    """
    if settings.prompts is not None and settings.classes:
        raise SamlabelError(
            "--prompts and --classes both given; on an open-vocabulary detector they mean the same: give one"
        )
    if settings.prompts is not None:
        return settings.prompts
    return Ontology.parse(list(settings.classes)) if settings.classes else None


def _split(text: str, where: str) -> list[str]:
    """Comma-separated entries; an empty one (``a,,b``, a trailing comma) is refused."""
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise SamlabelError(f"prompts: empty phrase in {where.strip()!r}; separate phrases with single commas")
    return parts


def _name(name: str) -> str:
    name = name.strip()
    if not name:
        raise SamlabelError("prompts: a class name before ':' is empty; write 'class: phrase, ...'")
    if "@" in name:
        raise SamlabelError(f"prompts: class {name!r}: thresholds go on phrases ('{name.split('@')[0]}: phrase@0.6')")
    bad = [c for c in _SYNTAX if c in name]
    if bad:
        raise SamlabelError(f"prompts: class name {name!r} contains {bad[0]!r}, which separates entries")
    return name


def _phrase(entry: str) -> tuple[str, float | None]:
    """``"helmet@0.6"`` -> ``("helmet", 0.6)``; ``"helmet"`` -> ``("helmet", None)``."""
    entry = entry.strip()
    text, at, given = entry.partition("@")
    text = text.strip()
    if not text:
        raise SamlabelError(f"prompts: empty phrase in {entry!r}")
    bad = [c for c in _SYNTAX if c in text]
    if bad:
        raise SamlabelError(f"prompts: phrase {text!r} contains {bad[0]!r}, which separates entries")
    if not at:
        return text, None
    try:
        threshold = float(given)
    except ValueError:
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:  # NaN fails too
        raise SamlabelError(f"prompts: phrase {text!r}: threshold {given.strip()!r} is not a number in [0, 1]")
    return text, threshold
