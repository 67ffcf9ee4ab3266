"""Create-or-update and delete CloudFormation stacks through change sets, with progress."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

from botocore.exceptions import ClientError

NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
Printer = Callable[[str], None]


class DeployError(RuntimeError):
    """A stack operation failed; the message carries CloudFormation's reasons."""


def stack_status(cfn: Any, name: str) -> str | None:
    try:
        stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    status = stacks[0]["StackStatus"] if stacks else None
    return None if status == "DELETE_COMPLETE" else status


def stack_outputs(cfn: Any, name: str) -> dict[str, str]:
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def deploy_stack(cfn: Any, name: str, parameters: Mapping[str, str], *, body: str | None = None,
                 url: str | None = None, capabilities: Iterable[str] = (), poll: float = 5.0,
                 out: Printer = print) -> dict[str, str]:
    """Create or update ``name`` from a template body or URL; returns the stack's outputs."""
    status = stack_status(cfn, name)
    if status == "ROLLBACK_COMPLETE":
        # A first creation that failed leaves a stack that can only be deleted.
        out(f"{name}: removing the failed first attempt (ROLLBACK_COMPLETE)")
        delete_stack(cfn, name, poll=poll, out=out)
        status = None
    change_set = f"deploy-{int(time.time() * 1000)}"
    kwargs: dict[str, Any] = {
        "StackName": name, "ChangeSetName": change_set,
        "ChangeSetType": "UPDATE" if status else "CREATE",
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        "Capabilities": list(capabilities),
        "Tags": [{"Key": "app", "Value": "c3-render"}],
    }
    kwargs.update({"TemplateBody": body} if body is not None else {"TemplateURL": url})
    cfn.create_change_set(**kwargs)
    state = _wait_change_set(cfn, name, change_set, poll)
    if state["Status"] == "FAILED":
        reason = state.get("StatusReason", "")
        if any(marker in reason for marker in NO_CHANGES):
            cfn.delete_change_set(StackName=name, ChangeSetName=change_set)
            out(f"{name}: up to date")
            return stack_outputs(cfn, name)
        raise DeployError(f"{name}: change set failed: {reason}")
    out(f"{name}: {'updating' if status else 'creating'} ({len(state.get('Changes', []))} changes)")
    started = time.time()
    cfn.execute_change_set(StackName=name, ChangeSetName=change_set)
    final = wait_stack(cfn, name, since=started, poll=poll, out=out)
    if final not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise DeployError(f"{name}: ended in {final}:\n" + "\n".join(failure_reasons(cfn, name, started)))
    return stack_outputs(cfn, name)


def delete_stack(cfn: Any, name: str, poll: float = 5.0, out: Printer = print) -> None:
    if stack_status(cfn, name) is None:
        out(f"{name}: does not exist")
        return
    started = time.time()
    cfn.delete_stack(StackName=name)
    final = wait_stack(cfn, name, since=started, poll=poll, out=out)
    if final not in (None, "DELETE_COMPLETE"):
        raise DeployError(f"{name}: ended in {final}:\n" + "\n".join(failure_reasons(cfn, name, started)))
    out(f"{name}: deleted")


def _wait_change_set(cfn: Any, name: str, change_set: str, poll: float) -> dict[str, Any]:
    while True:
        state = cfn.describe_change_set(StackName=name, ChangeSetName=change_set)
        if state["Status"] in ("CREATE_COMPLETE", "FAILED"):
            return state
        time.sleep(poll)


def wait_stack(cfn: Any, name: str, since: float, poll: float, out: Printer) -> str | None:
    """Poll until the stack leaves its *_IN_PROGRESS state, printing resource events."""
    seen: set[str] = set()
    while True:
        status = stack_status(cfn, name)
        for event in _new_events(cfn, name, since, seen):
            reason = f" - {event['ResourceStatusReason']}" if event.get("ResourceStatusReason") else ""
            out(f"  {event['LogicalResourceId']}: {event['ResourceStatus']}{reason}")
        if status is None or not status.endswith("_IN_PROGRESS"):
            return status
        time.sleep(poll)


def _new_events(cfn: Any, name: str, since: float, seen: set[str]) -> list[dict[str, Any]]:
    try:
        events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    except ClientError:
        return []
    fresh = [e for e in events if e["EventId"] not in seen and e["Timestamp"].timestamp() >= since - 1]
    seen.update(e["EventId"] for e in fresh)
    return list(reversed(fresh))


def failure_reasons(cfn: Any, name: str, since: float) -> list[str]:
    try:
        events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    except ClientError:
        return ["(no stack events available)"]
    return [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', e['ResourceStatus'])}"
            for e in events if e["ResourceStatus"].endswith("_FAILED")
            and e["Timestamp"].timestamp() >= since - 1] or ["(no failed resource reported)"]
