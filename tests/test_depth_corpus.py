"""Issue 25: the depth files artists export (tests/depth_corpus.py) read right, or warned with advice that works.

Each case is a file generated from a scene with known geometry; the verdicts are defined in depth_corpus.evaluate:
"right" (Spearman >= 0.99 with 1/Z, background black, no bright rims, no false "looks like 1/Z"), or "warned" with
every flag a warning suggests giving the right map when followed. Never silently wrong, never refused.
"""

import pytest

from depth_corpus import cases, evaluate

CASES = cases()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_export_reads_right_or_warns_with_working_advice(case, folder):
    outcome = evaluate(case, folder)
    assert outcome.verdict in ("right", "warned"), (outcome.verdict, round(outcome.rho, 3), outcome.background_ok,
                                                    outcome.rims, outcome.warnings)


def test_the_corpus_covers_every_class_of_the_issue():
    names = " | ".join(c.name for c in CASES)
    for fragment in ("cops remap near-black, sky 0", "inverted, sky white", "pz filtered edges", "pillar",
                     "mist", "lone Y", "stereo parts without multiView", "b44", "alpha-masked", "LZW",
                     "pixelAspectRatio", "--polarity near-black", "--mode disparity --near 1 --far 40",
                     "sky clamped white", "no cue to its polarity", "--channel R", "--invert on"):
        assert fragment in names, fragment
