"""Validation of a submitted API-format graph, following ComfyUI's ``validate_prompt``.

Every node's class must exist; at least one output node must be present. Each output
node is then validated with the nodes it depends on (only those: a node no output
needs is never checked nor run): required inputs present, links pointing at outputs
of the right type, widget values converted to INT/FLOAT/STRING/BOOLEAN or found in
their list, input files present. Undeclared inputs are ignored. Outputs that fail are
listed in ``node_errors`` (with ``dependent_outputs``); the prompt is refused only when
no output is left. Messages and shapes are ComfyUI's, except malformed links, which
ComfyUI reports as a Python exception and the simulator names plainly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .comfyui_nodes import NODE_CLASSES, WIDGET_TYPES, Spec, output_nodes

CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


@dataclass
class Validation:
    error: dict[str, Any] | None = None  # the top-level error: the prompt is refused
    node_errors: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # the output nodes that will run
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> its declared, converted inputs


def error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


class _Checker:
    def __init__(self, graph: dict[str, Any], files: Path):
        self.graph, self.files = graph, files
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        self.values: dict[str, dict[str, Any]] = {}

    def node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        """(valid, this node's own errors); upstream failures make it invalid without errors."""
        if node_id in self.validated:
            return self.validated[node_id]
        self.validated[node_id] = (False, [])  # a cycle through here is invalid
        node = self.graph[node_id]
        inputs = node.get("inputs") or {}
        errors, upstream_ok, values = [], True, {}
        for name, spec in NODE_CLASSES[node["class_type"]].inputs().items():
            if name not in inputs:
                if name in NODE_CLASSES[node["class_type"]].required:
                    errors.append(error("required_input_missing", "Required input is missing", name,
                                        input_name=name))
                continue
            value = inputs[name]
            if isinstance(value, list):
                problem = self.link(name, spec, value)
                if problem is None and not self.node(value[0])[0]:
                    upstream_ok = False
            else:
                problem, value = self.widget(name, spec, value)
            if problem:
                errors.append(problem)
            values[name] = value
        self.values[node_id] = values
        self.validated[node_id] = (not errors and upstream_ok, errors)
        return self.validated[node_id]

    def link(self, name: str, spec: Spec, value: list[Any]) -> dict[str, Any] | None:
        if len(value) != 2:
            return error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                         name, input_name=name, received_value=value)
        source = self.graph.get(value[0]) if isinstance(value[0], str) else None
        if not isinstance(source, dict) or not isinstance(value[1], int):
            return error("bad_linked_input", "Linked node does not exist", f"{name}: node {value[0]}",
                         input_name=name, linked_node=value)
        outputs = NODE_CLASSES[source["class_type"]].outputs
        if not 0 <= value[1] < len(outputs):
            return error("bad_linked_input", "Linked output index out of range",
                         f"{name}: {source['class_type']} has {len(outputs)} outputs", input_name=name,
                         linked_node=value)
        got = outputs[value[1]]
        wanted = spec if isinstance(spec, str) and not spec.startswith("file:") else None
        if wanted is not None and "*" not in (got, wanted) and got != wanted:
            return error("return_type_mismatch", "Return type mismatch between linked nodes",
                         f"{name}, received_type({got}) mismatch input_type({wanted})", input_name=name,
                         received_type=got, linked_node=value)
        return None

    def widget(self, name: str, spec: Spec, value: Any) -> tuple[dict[str, Any] | None, Any]:
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        if isinstance(spec, str) and spec.startswith("file:"):
            kind = spec.split(":", 1)[1]
            path = Path(str(value))
            if not value or path.is_absolute() or ".." in path.parts or not (self.files / path).is_file():
                return error("custom_validation_failed", "Custom validation failed for node",
                             f"{name} - Invalid {kind} file: {value}", input_name=name), value
            return None, value
        if isinstance(spec, list):
            if value not in spec:
                return error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {spec}",
                             input_name=name, received_value=value), value
            return None, value
        if spec not in WIDGET_TYPES:  # stricter than ComfyUI, which fails only when the node runs
            return error("invalid_input_type", "Input must be a link",
                         f"{name} expects {spec} from another node", input_name=name), value
        try:
            return None, CONVERT[spec](value)
        except (TypeError, ValueError) as exc:
            return error("invalid_input_type", f"Failed to convert an input value to a {spec} value",
                         f"{name}, {value}, {exc}", input_name=name, received_value=value,
                         exception_message=str(exc)), value


def validate(graph: Any, files: Path) -> Validation:
    """Check ``graph`` as ComfyUI's ``/prompt`` does; ``files`` is the input folder."""
    if not isinstance(graph, dict):
        return Validation(error("invalid_prompt", "Invalid prompt", "the prompt must be an object"))
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return Validation(error("invalid_prompt",
                                    "Cannot execute because a node is missing the class_type property.",
                                    f"Node ID '#{node_id}'"))
        if node["class_type"] not in NODE_CLASSES:
            return Validation(error("invalid_prompt", f"Cannot execute because node {node['class_type']} does "
                                    "not exist.", f"Node ID '#{node_id}'"))
    outputs = output_nodes(graph)
    if not outputs:
        return Validation(error("prompt_no_outputs", "Prompt has no outputs"))
    checker, good, failed, node_errors = _Checker(graph, files), [], [], {}
    for output in outputs:
        valid, reasons = checker.node(output)
        if valid:
            good.append(output)
            continue
        failed.extend(f"{r['message']}: {r['details']}" for r in reasons)
        for node_id, (ok, errors) in checker.validated.items():
            if not ok and errors:
                entry = node_errors.setdefault(node_id, {"errors": errors, "dependent_outputs": [],
                                                         "class_type": graph[node_id]["class_type"]})
                entry["dependent_outputs"].append(output)
    if not good:
        return Validation(error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                "\n".join(failed)), node_errors)
    return Validation(None, node_errors, good, checker.values)
