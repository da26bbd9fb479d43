"""scripts/realm.py as a module for tests (scripts/ is no package): one module object for the
whole session, whichever test module loads it first.

    from realm_fixtures import realm_module
    with realm_module.Realm() as realm, realm_module.Directory(realm) as directory: ...
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_realm_module() -> ModuleType:
    name = "jailcc_realm"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent.parent / "scripts" / "realm.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


realm_module = load_realm_module()
