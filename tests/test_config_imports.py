"""Import hygiene of the config layer: no TensorFlow for a config check, no import cycles.

``jaxmim.config.check_config`` validates the augmentation fields through the pure-Python
``jaxmim.augment_config``; the tf.data ops stay in ``jaxmim.data.augment``. The leaf modules
(``jaxmim.constants``, ``jaxmim.augment_config``, ``jaxmim.recipes``) import nothing that could
import them back.
"""

import ast
import glob
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jaxmim_imports(relpath: str) -> set[str]:
    """Every module a file imports (module level and inside functions), as dotted names."""
    with open(os.path.join(ROOT, relpath)) as f:
        tree = ast.parse(f.read(), relpath)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f'{node.module}.{a.name}' for a in node.names)
    return names


def _touches(names: set[str], module: str) -> bool:
    return any(n == module or n.startswith(module + '.') for n in names)


def test_config_check_imports_no_tensorflow():
    # A fresh interpreter: load and check every config file (default variant), then make sure
    # nothing on that path imported TensorFlow.
    code = textwrap.dedent(f'''
        import glob, os, sys
        sys.path.insert(0, {ROOT!r})
        from jaxmim import config, recipes, registry  # noqa: F401
        paths = sorted(glob.glob(os.path.join({ROOT!r}, 'configs', '**', '*.py'), recursive=True))
        assert paths
        for path in paths:
            c = config.load_config_file(path)
            config.check_config(c)
            config.resolve_data_config(c)
        c = config.finetune_defaults()
        recipes.timm_recipe(c)
        config.check_config(c)
        bad = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.'))
        assert not bad, f'a config check imported TensorFlow: {{bad[:5]}}'
        print('checked', len(paths))
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'checked' in out.stdout


def test_leaf_modules_import_no_jaxmim_cycle():
    constants = _jaxmim_imports('jaxmim/constants.py')
    assert not _touches(constants, 'jaxmim'), constants
    fields = _jaxmim_imports('jaxmim/augment_config.py')
    assert not _touches(fields, 'jaxmim') and not _touches(fields, 'tensorflow'), fields
    recipes = {n for n in _jaxmim_imports('jaxmim/recipes.py') if _touches({n}, 'jaxmim')}
    assert recipes <= {'jaxmim.constants', 'jaxmim.constants.IMAGENET_MEAN', 'jaxmim.constants.IMAGENET_STD'}, recipes


def test_config_registry_no_cycle():
    registry = _jaxmim_imports('jaxmim/registry.py')
    assert not _touches(registry, 'jaxmim.config'), 'jaxmim.registry must not import jaxmim.config'
    config = _jaxmim_imports('jaxmim/config.py')
    assert not _touches(config, 'jaxmim.data'), 'jaxmim.config must not import the tf.data package'
    assert not _touches(config, 'tensorflow')


def test_demo_recipes_reject_unknown_variant():
    from jaxmim.config import load_config_file
    demo = os.path.join(ROOT, 'configs', 'demo')
    paths = sorted(glob.glob(os.path.join(demo, 'finetune_*.py'))) + [os.path.join(demo, 'groupmixformer_fmnist.py')]
    assert len(paths) == 6
    for path in paths:
        with pytest.raises(ValueError, match="variant must be 'pretrained' or 'scratch'"):
            load_config_file(f'{path}:pretrain')
        assert load_config_file(f'{path}:pretrained').pretrained.required
        assert not load_config_file(path).pretrained.required
