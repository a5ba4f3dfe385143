"""Entity words of a caption for VIMI's subject-driven task (seed 003 §3.3, Fig. 4).

The paper asks an LLM for the entity words ("A husky dog sniffing a coke bottle on the floor."
→ "husky dog", "coke bottle"); each one is then grounded to an image segment of a frame. ragvid
runs offline with no model weights, so entities are the caption's **noun phrases**, found by a
small chunker over word classes:

* a phrase is a run of adjective / noun words ending in a noun, started at the caption's
  start, after a determiner or number ("a", "the", "two"), a preposition, a conjunction, a
  punctuation mark, or a verb (an object: "having dinner") — and ended by anything else (a
  verb, an adverb, a preposition, …). "-ing" / "-ed" words are verbs, except right after a
  determiner and before a noun ("a running man");
* phrases headed by a word that names no thing in the frame ("video", "footage", "close-up",
  "view", "left", "night", "group" of …) are dropped, leading non-depictive adjectives
  ("fast", "beautiful") are stripped, duplicates go, and the first ``max_entities`` are kept.

Where the word classes come from is the pluggable part, chosen by name
(``VimiConfig.entity_extractor``, :data:`EXTRACTORS`):

``lemminflect``
    the `lemminflect <https://github.com/bjascob/LemmInflect>`_ package's own English lexicon
    (bundled in its wheel by its authors, no download): every part of speech a word can take.
``rules``
    the documented fallback, no package at all: closed word lists (determiners, prepositions,
    pronouns, auxiliaries, common adverbs and verbs) and suffixes ("-ly" adverbs, "-ing" /
    "-ed" verb forms, "-less" / "-ful" / "-ous" adjectives); any other word may be a noun.
    Weaker on bare verbs and adverbs that look like nouns ("a dog runs fast"), fine on the
    participle style of WebVid captions.

Neither resolves real ambiguity the way a trained tagger does: "a man walks" ends the phrase at
"walks" only because "walk" is one of :data:`COMMON_VERBS` (so "dog toys" stays a noun phrase).
spaCy / NLTK models on the registry are third-party re-uploads, so they are not used.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

Lexicon = Callable[[str], frozenset[str]]  # a lower-case word → the parts of speech it can take

DETERMINERS = frozenset(
    "a an the this that these those his her its their my your our some several many few "
    "each every another any both all no one two three four five six seven eight nine ten "
    "eleven twelve dozens hundreds thousands".split()
)
PREPOSITIONS = frozenset(
    "on in at with against of for from to into onto over under near by through across "
    "along around behind beside besides between above below beneath toward towards off "
    "about like during inside outside within without upon among amid via past up down out "
    "than as per".split()
)
CONJUNCTIONS = frozenset("and or but while then so yet nor whereas because if when".split())
PRONOUNS = frozenset(
    "i you he she it we they me him us them myself himself herself itself themselves "
    "someone somebody something anyone anything everyone everything nobody nothing who "
    "whom whose which what there here".split()
)
AUXILIARIES = frozenset(
    "is are was were be been being am has have had do does did can could will would shall "
    "should may might must isn't aren't don't doesn't".split()
)
ADVERBS = frozenset(
    "very too also just still away back together again here there now then slowly "
    "quickly almost always never often soon already outside inside upstairs downstairs "
    "forward forwards backward backwards upward upwards downward downwards leftwards "
    "rightwards sideways around apart alone ahead nearby".split()
)
# verbs whose third-person "-s" form is also a plural noun ("walks"): read as the verb when
# it follows the noun phrase's head ("a man walks on the beach")
COMMON_VERBS = frozenset(
    "walk run sit stand play move fly swim look talk hold eat drink ride drive jump dance "
    "smile turn fall rise grow spin roll slide go come show lie sleep wave flow shine float "
    "swing blow pass work take make give open close cut cook read write sing laugh cry "
    "climb pull push throw catch kick hit wash clean pour stir sniff chase watch wait rest "
    "stay lean hang sway glow burn melt crawl".split()
)
# nouns ending in "-ing" / "-ly" (the rules lexicon would read them as verbs / adverbs)
ING_NOUNS = frozenset(
    "building buildings ceiling painting paintings wedding evening morning clothing thing "
    "things king ring rings wing wings string strings spring swing sibling pudding icing "
    "lightning parking railing stocking stockings sling ping".split()
)
LY_WORDS = frozenset(
    "family fly butterfly dragonfly jelly belly lily holly rally ally bully july italy "
    "sally assembly ugly lovely friendly lonely curly early holy silly jolly".split()
)
# adjective-only words the rules lexicon would otherwise take for nouns ("growing larger")
COMPARATIVES = frozenset(
    "larger smaller bigger brighter darker faster slower higher lower closer further wider "
    "taller shorter".split()
)
# heads that name no thing of the frame: what the shot is, directions, times, quantities
NON_GROUNDABLE = frozenset(
    "video videos footage clip clips animation animations shot shots close-up closeup "
    "close-ups view views scene scenes image images picture pictures frame frames motion "
    "loop loops timelapse time-lapse 4k hd concept illustration render rendering camera "
    "copyspace text space angle perspective top bottom side left right middle center "
    "centre front distance place way direction time day days night nights morning evening "
    "moment year years second seconds minute minutes hour hours lot lots group groups "
    "bunch couple pair number kind type variety piece pieces series set row style".split()
)
# leading adjectives that say nothing about how the thing looks ("a fast red circle")
NON_DEPICTIVE = frozenset(
    "fast slow quick rapid beautiful lovely nice good great amazing awesome wonderful "
    "stunning gorgeous perfect real stock".split()
)
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*")
_BOUNDARY = re.compile(r"[.,;:!?()\[\]\"“”/|]")
_NUMBER = re.compile(r"\d+(?:st|nd|rd|th|s)?")


@dataclass(frozen=True)
class Entity:
    """One entity word as written in the caption, and where: ``caption[start:end] == text``."""

    text: str
    start: int
    end: int


# -- lexicons --------------------------------------------------------------------------------


def rules_lexicon(word: str) -> frozenset[str]:
    """Word classes from suffixes and closed lists only (the no-package fallback)."""
    if word in ADVERBS or (word.endswith("ly") and len(word) > 4 and word not in LY_WORDS):
        return frozenset({"ADV"})
    if word in COMPARATIVES or (len(word) > 5 and word.endswith(("less", "ful", "ous"))):
        return frozenset({"ADJ"})
    if word.endswith("ing") and len(word) > 5 and word not in ING_NOUNS:
        return frozenset({"VERB", "ADJ"})
    if word.endswith("ed") and len(word) > 4:
        return frozenset({"VERB", "ADJ"})
    if word.endswith("s") and word[:-1] in COMMON_VERBS:
        return frozenset({"VERB", "NOUN"})
    return frozenset({"NOUN", "ADJ"})


@lru_cache(maxsize=1)
def _lemminflect():
    try:
        import lemminflect
    except ImportError:
        raise ImportError(
            "the 'lemminflect' entity extractor needs the lemminflect package — "
            "`pip install lemminflect` (it bundles its lexicon), or set "
            "VimiConfig.entity_extractor='rules' (no package)"
        ) from None
    return lemminflect


@lru_cache(maxsize=65536)
def lemminflect_lexicon(word: str) -> frozenset[str]:
    """Every part of speech lemminflect's lexicon lists for ``word``; a word it does not
    know (a name: "Tulear") may be a noun. Closed-class adverbs the lexicon also lists as
    nouns ("left", "back") keep their adverb reading."""
    tags = frozenset(_lemminflect().getAllLemmas(word))
    if word in ADVERBS:
        return tags | {"ADV"}
    return tags or frozenset({"NOUN"})


EXTRACTORS: dict[str, Lexicon] = {"lemminflect": lemminflect_lexicon, "rules": rules_lexicon}


def get_lexicon(name: str) -> Lexicon:
    if name not in EXTRACTORS:
        raise ValueError(
            f"unknown entity extractor '{name}'. Available: {', '.join(sorted(EXTRACTORS))}"
        )
    if name == "lemminflect":
        _lemminflect()  # a missing package fails here, naming the fix
    return EXTRACTORS[name]


# -- the chunker -----------------------------------------------------------------------------


@dataclass
class _Tok:
    text: str
    low: str
    start: int
    end: int
    kind: str  # DET PREP CONJ PRON AUX or OPEN
    tags: frozenset[str]
    after_break: bool  # punctuation between this token and the previous one

    @property
    def nounish(self) -> bool:
        return self.kind == "OPEN" and bool(self.tags & {"NOUN", "PROPN"})

    @property
    def modifier(self) -> bool:
        return self.kind == "OPEN" and bool(self.tags & {"NOUN", "PROPN", "ADJ"})


def _tokens(caption: str, lexicon: Lexicon) -> list[_Tok]:
    out: list[_Tok] = []
    prev_end = 0
    for m in _TOKEN.finditer(caption):
        low = m.group().lower().replace("’", "'")
        if low in DETERMINERS or _NUMBER.fullmatch(low):
            kind, tags = "DET", frozenset()
        elif low in PREPOSITIONS:
            kind, tags = "PREP", frozenset()
        elif low in CONJUNCTIONS:
            kind, tags = "CONJ", frozenset()
        elif low in PRONOUNS:
            kind, tags = "PRON", frozenset()
        elif low in AUXILIARIES:
            kind, tags = "AUX", frozenset()
        else:
            kind, tags = "OPEN", lexicon(low)
        brk = bool(_BOUNDARY.search(caption[prev_end : m.start()]))
        out.append(_Tok(m.group(), low, m.start(), m.end(), kind, tags, brk))
        prev_end = m.end()
    return out


def _participle(tok: _Tok) -> bool:
    return "VERB" in tok.tags and (tok.low.endswith("ing") or tok.low.endswith("ed"))


def _verbish(toks: list[_Tok], i: int, in_phrase: bool, prev: str) -> bool:
    """Is token ``i`` a verb here (ends or precedes a phrase) rather than a noun / modifier?"""
    t = toks[i]
    if t.kind != "OPEN":
        return False
    if not t.tags & {"NOUN", "PROPN", "ADJ"}:
        return True  # a verb or an adverb only
    nxt = toks[i + 1] if i + 1 < len(toks) and not toks[i + 1].after_break else None
    if _participle(t):
        # "a running man": a modifier right after a determiner (or an adjective), before a noun
        lead = prev == "DET" or (in_phrase and prev == "ADJ")
        return not (lead and nxt is not None and nxt.nounish and not _participle(nxt))
    if in_phrase and t.low.endswith("s") and t.low[:-1] in COMMON_VERBS and "VERB" in t.tags:
        return True  # "a man walks …"
    return False


def noun_phrases(caption: str, lexicon: Lexicon) -> list[Entity]:
    """Every noun phrase of ``caption`` (see the module docstring), in order, unfiltered."""
    toks = _tokens(caption, lexicon)
    phrases: list[list[_Tok]] = []
    cur: list[_Tok] = []
    prev = "START"

    def close() -> None:
        while cur and not cur[-1].nounish:  # a phrase ends in its head noun
            cur.pop()
        if cur:
            phrases.append(cur.copy())
        cur.clear()

    for i, t in enumerate(toks):
        if t.after_break:
            close()
            prev = "BREAK"
        if t.kind != "OPEN":
            close()
            prev = t.kind
            continue
        if cur:
            if t.modifier and not _verbish(toks, i, True, prev):
                cur.append(t)
                prev = "ADJ" if "ADJ" in t.tags and not t.nounish else "NOUN"
                continue
            close()
            prev = "ADV" if "ADV" in t.tags else "VERB"
            continue
        starts = prev in ("START", "DET", "PREP", "CONJ", "BREAK") or (
            prev == "VERB" and "ADV" not in t.tags
        )
        if starts and t.modifier and not _verbish(toks, i, False, prev):
            cur.append(t)
            prev = "ADJ" if "ADJ" in t.tags and not t.nounish else "NOUN"
        else:
            prev = "ADV" if "ADV" in t.tags and not t.nounish else "VERB"
    close()
    out = []
    for p in phrases:
        if p[-1].low in NON_GROUNDABLE:
            continue
        while len(p) > 1 and p[0].low in NON_DEPICTIVE:
            p = p[1:]
        out.append(Entity(caption[p[0].start : p[-1].end], p[0].start, p[-1].end))
    return out


def entity_spans(caption: str, max_entities: int, extractor: str = "lemminflect") -> list[Entity]:
    """The first ``max_entities`` distinct entity words of ``caption`` with their positions."""
    if max_entities < 1:
        raise ValueError(f"max_entities={max_entities}: must be ≥ 1")
    seen: set[str] = set()
    out: list[Entity] = []
    for e in noun_phrases(caption or "", get_lexicon(extractor)):
        key = e.text.lower()
        if key in seen:
            continue
        seen.add(key)
        out.append(e)
        if len(out) == max_entities:
            break
    return out


def extract_entities(caption: str, max_entities: int, extractor: str = "lemminflect") -> list[str]:
    """The entity words of ``caption`` as written ("husky dog", "coke bottle", "floor")."""
    return [e.text for e in entity_spans(caption, max_entities, extractor)]
