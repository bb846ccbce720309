"""The workflow sandbox, with the code it runs for every activation compiled once (#16).

The SDK's sandbox (`temporalio.worker.workflow_sandbox`) enters a workflow run's sandbox by
`exec`-ing a short code string: one for each activation, and one for each payload sequence the
worker visits on the way in and out (`get_serialization_context`, three visits per activation
and three per completion), even with no codec configured. `exec` of a string compiles it
every time: py-spy put that compile at 3.7 % of the worker's CPU in `bench/payments.py`'s
run, more than the code it runs.

`CompiledSandboxedWorkflowRunner` is the SDK's `SandboxedWorkflowRunner` whose instances hand
`exec` the same strings compiled once (`compiled_sandbox_code`). Nothing else changes: the
same restrictions, the same importer, the same code run in the same globals, so determinism
checks and replay behave as before. It reaches into one private SDK class (`_Instance`, whose
`_run_code(code, **globals)` passes `code` to `exec`, which takes a string or a code object);
with an SDK that no longer has it, `workflow_runner` falls back to the plain runner
(`compiled_code_supported()` says which, and a test checks the installed SDK has it).
"""

from __future__ import annotations

import functools
import inspect
from types import CodeType
from typing import Any

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

try:
    from temporalio.worker.workflow_sandbox import _runner as sdk_runner
except ImportError:  # an SDK that moved its sandbox internals: the plain runner
    sdk_runner = None  # type: ignore[assignment]

# The strings are a handful of constants (activate, the two context lookups) and one import
# string per workflow class: the cache never needs to evict, the bound is only a bound.
SANDBOX_CODE_CACHE_MAX = 64


@functools.lru_cache(maxsize=SANDBOX_CODE_CACHE_MAX)
def compiled_sandbox_code(code: str) -> CodeType:
    """`code` compiled as `exec` compiles a string (file name `<string>`), once per string."""
    return compile(code, "<string>", "exec")


def compiled_code_supported() -> bool:
    """Whether the installed SDK's sandbox instance runs its code through `_run_code(code, **globals)`."""
    instance_class = getattr(sdk_runner, "_Instance", None)
    run_code = getattr(instance_class, "_run_code", None)
    if instance_class is None or run_code is None:
        return False
    parameters = list(inspect.signature(run_code).parameters.values())
    return [parameter.name for parameter in parameters[:2]] == ["self", "code"] and any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters
    )


if compiled_code_supported():

    class _CompiledCodeInstance(sdk_runner._Instance):
        def _run_code(self, code: str, **extra_globals: Any) -> None:
            # `exec` takes the code object as it takes the string it was compiled from.
            super()._run_code(compiled_sandbox_code(code), **extra_globals)  # type: ignore[arg-type]


class CompiledSandboxedWorkflowRunner(SandboxedWorkflowRunner):
    """`SandboxedWorkflowRunner` whose sandbox code strings are compiled once per worker process."""

    def create_instance(self, det: Any) -> Any:
        return _CompiledCodeInstance(det, self.runner_class, self.restrictions)


def workflow_runner(restrictions: SandboxRestrictions) -> SandboxedWorkflowRunner:
    """The sandbox runner the worker and the replay tests use: compiled code when the SDK allows."""
    if compiled_code_supported():
        return CompiledSandboxedWorkflowRunner(restrictions=restrictions)
    return SandboxedWorkflowRunner(restrictions=restrictions)
