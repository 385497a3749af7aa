"""Run code right after a module is first imported (a post-import hook on `sys.meta_path`).

`import avbert` registers the family with transformers' Auto classes without importing what the registrations need
(`modeling_utils`, `processing_utils`, ...: seconds of imports). The Auto classes of a kind live in one transformers
module (`transformers.models.auto.modeling_auto` holds `AutoModel` and its mapping), and nothing can look a class up
through them before that module is imported; so each registration runs once, as soon as either that module or the
avbert module that defines the classes is imported, whichever comes first.

Why a hook and not plain registration in `__init__`: `AutoModel.register` and its siblings take the classes, so a plain
`__init__` imports the model and processor code, and every `avbert-*` command imports `avbert` before its parser
exists, `--help` included. Measured (2026-12-06, AMD EPYC, 2 cores, medians of 3 fresh processes, interleaved;
probe: time `python -c CODE` for each):

    import avbert, with this hook                                   0.05 s
    import torch, transformers                                      2.97 s
    from transformers import TrainingArguments (a --help's floor)   3.04 s
    what a plain __init__ imports (Auto modules + avbert's modeling,
      processing, configuration modules)                            6.05 s
    avbert-prepare --help, with this hook                           0.25 s

So without it `import avbert` would take 2x `import torch, transformers`, and every command's `--help` at least 6 s
instead of 0.25-3 s; importing late inside the commands cannot help, since the package's `__init__` runs first.
Registering by name in transformers' private lazy mappings would avoid the hook only by patching the library.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType


class _RunAfterExec(importlib.abc.Loader):
    """Executes the module with its own loader, then runs the hook; the module keeps its own loader."""

    def __init__(self, loader: importlib.abc.Loader, finder: PostImportHooks, fullname: str) -> None:
        self.loader = loader
        self.finder = finder
        self.fullname = fullname

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        self.finder.executing.add(self.fullname)
        try:
            self.loader.exec_module(module)
        finally:
            self.finder.executing.discard(self.fullname)
        self.finder.fire(self.fullname)


class PostImportHooks(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module it asks the finders after it and wraps the loader they return."""

    def __init__(self) -> None:
        self._hooks: dict[str, Callable[[], None]] = {}
        self.executing: set[str] = set()  # watched modules being imported now

    def when_imported(self, module_names: Sequence[str], hook: Callable[[], None]) -> None:
        """Run `hook` once, right after the first of `module_names` is imported (now if one already is)."""
        if any(name in sys.modules for name in module_names):
            hook()
            return
        for name in module_names:
            self._hooks[name] = hook
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def fire(self, fullname: str) -> None:
        hook = self._hooks.get(fullname)
        if hook is None:
            return
        # Another of its modules is half imported (`transformers.modeling_layers`, which `avbert.modeling_avbert`
        # imports, imports `AutoModel`): the end of that import runs the hook.
        if any(self._hooks.get(name) is hook for name in self.executing):
            return
        # Unwatch all of this hook's modules first: the hook imports the others.
        self._hooks = {name: other for name, other in self._hooks.items() if other is not hook}
        if not self._hooks and self in sys.meta_path:
            sys.meta_path.remove(self)
        hook()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RunAfterExec(spec.loader, self, fullname)
                return spec
        return None


post_import_hooks = PostImportHooks()
