"""Citations a reader can follow: no source file cites notes that are not in the repository.

Docstrings and comments cite upstream code as ``owner/repo@commit path:lines``, a paper section,
or a file of this repository (``docs/design.md``, ``docs/performance.md``). This test scans every
``.py`` file under ``jaxmim/``, ``convert/``, ``launch/``, ``configs/`` and ``tests/`` (this file
excepted) and fails with ``file:line`` for each mention of a private spec file
(:data:`PRIVATE_FILES`) or of a bare "spec §" / "spec section". Pure text, no JAX.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""

SCANNED_DIRS = ('jaxmim', 'convert', 'launch', 'configs', 'tests')
"""Top-level folders whose ``.py`` files are scanned (recursively)."""

PRIVATE_FILES = ('simmim_swin.md', 'ummae.md', 'greenmim.md', 'hivit.md', 'groupmixformer.md',
                 'jax_practices.md', 'pytorch_layouts.md', 'notes/protocol.md')
"""Spec notes kept outside the repository; citing them leaves the reader nowhere to go."""

_PATTERN = re.compile(
    r'(?<![\w.-])(?:' + '|'.join(re.escape(name) for name in PRIVATE_FILES) + r')(?![\w-])'
    r'|\bspec\s*§|\bspec\s+section\b',
    re.IGNORECASE)
"""A private file name (not as the tail of a longer name, e.g. ``mae_hivit.md`` does not match),
or "spec §" / "spec section"."""


def _scanned_files() -> list[Path]:
    """Every ``.py`` file under :data:`SCANNED_DIRS`, sorted, without this file."""
    this = Path(__file__).resolve()
    files = []
    for d in SCANNED_DIRS:
        files += [p for p in (ROOT / d).rglob('*.py') if p.resolve() != this]
    return sorted(files)


def find_private_citations(text: str) -> list[tuple[int, str]]:
    """``(line number, matched text)`` of every private citation in ``text`` (1-based lines)."""
    return [(i, m.group(0)) for i, line in enumerate(text.splitlines(), 1)
            for m in _PATTERN.finditer(line)]


def test_the_pattern_catches_private_citations_and_nothing_else():
    bad = ['spec ``simmim_swin.md`` section 5', '(spec §4)', 'see shared/spec/hivit.md §16',
           'Spec section 0', 'notes/protocol.md', 'SPEC § 7']
    for line in bad:
        assert find_private_citations(line), line
    good = ['microsoft/SimMIM@d3e29bc utils.py:126-204', 'docs/design.md', 'docs/performance.md',
            'rhs_spec[0]', 'tfds.core.ReadInstruction.from_spec(split)', 'PNG spec, ISO/IEC 15948',
            'sh.spec == P()', "@pytest.mark.parametrize('spec,model,steps', [", 'mae_hivit.md',
            'MAE paper (He et al., 2022) §4', 'hivit/get_started.md:25-29']
    for line in good:
        assert not find_private_citations(line), line


def test_no_source_file_cites_private_spec_notes():
    hits = []
    for path in _scanned_files():
        text = path.read_text(encoding='utf-8', errors='replace')
        hits += [f'{path.relative_to(ROOT)}:{n}: {found!r}' for n, found in find_private_citations(text)]
    assert not hits, ('citations of notes outside the repository (cite the upstream file:lines at '
                      'the pinned commit, a paper section or a docs/ file instead):\n' + '\n'.join(hits))
