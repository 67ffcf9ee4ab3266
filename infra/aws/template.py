"""CloudFormation templates as data: YAML with the short-form tags, and parameters.

Every template parameter can be given as ``--param Name=value`` or as an environment
variable named after it in UPPER_SNAKE_CASE (``WorkerImage`` -> ``WORKER_IMAGE``).
A parameter without a value and without a default stops the deploy before anything
is created, with a message that says what it is and how to pass it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

HERE = Path(__file__).resolve().parent
DATA_TEMPLATE = HERE / "data.yaml"
APP_TEMPLATE = HERE / "app.yaml"


class TemplateLoader(yaml.SafeLoader):
    """SafeLoader that turns ``!Ref x`` / ``!Sub ...`` / ``!GetAtt a.b`` into the long form."""


def _intrinsic(loader: TemplateLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


TemplateLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path | str) -> dict[str, Any]:
    return yaml.load(Path(path).read_text(), Loader=TemplateLoader)  # noqa: S506 - SafeLoader subclass


def env_name(parameter: str) -> str:
    """``ResultRetentionDays`` -> ``RESULT_RETENTION_DAYS``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", parameter).upper()


# What a local stack gives the parameters only a real account can fill (the worker's image,
# its network): the production-shaped profile and the local edge resolve app.yaml with these.
LOCAL_PARAMETERS = {"WorkerImage": "local", "VpcId": "vpc-local", "SubnetIds": "subnet-local"}


class ParameterError(ValueError):
    """Missing or invalid template parameters; the message lists every one."""


def resolve_parameters(template: Mapping[str, Any], given: Mapping[str, str],
                       environ: Mapping[str, str]) -> dict[str, str]:
    """Value of each parameter: ``given`` first, then its environment variable, then its default."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for name, spec in template.get("Parameters", {}).items():
        raw = given.get(name)
        if raw is None:
            raw = environ.get(env_name(name)) or None
        if raw is None and "Default" in spec:
            raw = str(spec["Default"])
        if raw is None:
            what = str(spec.get("Description", spec["Type"])).strip().rstrip(".")
            problems.append(f"missing template parameter {name} ({what}): "
                            f"pass --param {name}=<value> or set {env_name(name)}")
            continue
        problem = _check(name, spec, str(raw))
        if problem:
            problems.append(problem)
        values[name] = str(raw)
    if problems:
        raise ParameterError("\n".join(problems))
    return values


def _check(name: str, spec: Mapping[str, Any], value: str) -> str | None:
    if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
        return f"parameter {name}={value!r}: must be one of {', '.join(map(str, spec['AllowedValues']))}"
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        return f"parameter {name}={value!r}: must match {spec['AllowedPattern']}"
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            return f"parameter {name}={value!r}: must be a number"
        if "MinValue" in spec and number < float(spec["MinValue"]):
            return f"parameter {name}={value}: must be at least {spec['MinValue']}"
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            return f"parameter {name}={value}: must be at most {spec['MaxValue']}"
    if spec.get("Type", "").startswith("List<") and not all(v.strip() for v in value.split(",")):
        return f"parameter {name}={value!r}: must be a comma-separated list without empty items"
    return None


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``["A=1", "B=x"]`` -> ``{"A": "1", "B": "x"}``."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ParameterError(f"--param {pair!r}: expected Name=value")
        out[name] = value
    return out


class _CodeNotBuilt:
    """Stands in for Chalice's Lambda packager: names the zip without building it, so
    the template renders offline (``chalice package`` downloads the dependencies)."""

    def create_deployment_package(self, project_dir: str, python_version: str) -> str:
        return "./deployment.zip"


def render_app_template(stage: str, project_dir: Path = HERE.parents[1]) -> dict[str, Any]:
    """The app stack's template as ``chalice package --merge-template app.yaml`` writes
    it (same generator, build steps and merge), minus building deployment.zip."""
    import os

    from chalice.cli.factory import CLIFactory
    from chalice.deploy.appgraph import ApplicationGraphBuilder, DependencyBuilder
    from chalice.deploy.deployer import (BuildStage, DeploymentPackager, InjectDefaults,
                                         LambdaEventSourcePolicyInjector, PolicyGenerator,
                                         SwaggerBuilder, WebsocketPolicyInjector)
    from chalice.deploy.swagger import CFNSwaggerGenerator
    from chalice.package import (ResourceBuilder, SAMTemplateGenerator, TemplateDeepMerger,
                                 TemplateMergePostProcessor, YAMLTemplateSerializer)
    from chalice.policy import AppPolicyGenerator
    from chalice.utils import OSUtils

    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    factory = CLIFactory(project_dir=str(project_dir))
    config = factory.create_config_obj(chalice_stage_name=stage)
    osutils = OSUtils()
    build = BuildStage(steps=[
        InjectDefaults(),
        DeploymentPackager(_CodeNotBuilt()),  # type: ignore[arg-type]
        PolicyGenerator(policy_gen=AppPolicyGenerator(osutils=osutils), osutils=osutils),
        SwaggerBuilder(swagger_generator=CFNSwaggerGenerator()),
        LambdaEventSourcePolicyInjector(),
        WebsocketPolicyInjector(),
    ])
    resources = ResourceBuilder(ApplicationGraphBuilder(), DependencyBuilder(), build).construct_resources(
        config, stage)
    template = SAMTemplateGenerator(config, factory.create_package_options()).generate(resources)
    TemplateMergePostProcessor(osutils=osutils, merger=TemplateDeepMerger(),
                               template_serializer=YAMLTemplateSerializer(),
                               merge_template=str(APP_TEMPLATE)).process(template, config, "", stage)
    return template
