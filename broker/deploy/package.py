"""``make package``: the Lambda zip and the SAM template for one rules file.

Builds ``build/lambda.zip`` with ``lambda_handler.py``, the ``broker`` package (without
``broker/dev``, which only ``make run`` uses), ``schemas/``,
the rules (as ``rules.yaml``) and the pinned dependencies of ``requirements-lambda.txt``
installed for the Lambda platform, plus bytecode compiled ahead of time when an interpreter
of the target version is at hand (Lambda's ``/var/task`` is read-only, so Python could never
cache it there). Writes ``build/template.yaml`` with the generated blocks filled from the
same rules and ``CodeUri: lambda.zip``, ready for ``sam deploy``.

The rules must be fit for production first (``broker check --production``, module
:mod:`broker.config.production`): no demo API keys, no ``http://`` or ``*`` origins, no
identity the stack's authentication mode (``--auth``, ``make package STACK_AUTH=jwt``) cannot
produce. ``--allow-demo`` (``make package ALLOW_DEMO=1``) packages them anyway, for a trial
stack only, with every refusal printed as a warning.

The zip is reproducible: entries sorted, fixed timestamps and modes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent.parent
REQUIREMENTS = Path(__file__).resolve().parent / "requirements-lambda.txt"
LAMBDA_PYTHON = "3.12"  # template.yaml's Runtime
LAMBDA_PLATFORM = "manylinux2014_x86_64"  # template.yaml's Architectures: [x86_64]
BOTO3_MARK = "# --- boto3"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", ".pytest_cache", "tests"}


class PackageError(RuntimeError):
    """The package cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class Built:
    """What ``build`` produced."""

    zip_path: Path
    template_path: Path
    files: int
    size: int
    sha256: str
    bytecode: bool
    warnings: tuple[str, ...] = ()  # production refusals let through by allow_demo


def requirement_lines(path: Path, *, with_boto3: bool) -> list[str]:
    """The pinned requirements, without boto3 and its dependencies unless ``with_boto3``."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith(BOTO3_MARK) and not with_boto3:
            break
        line = line.split("#", 1)[0].strip()
        if line:
            if "==" not in line:
                raise PackageError(f"{path}: '{line}' is not pinned with ==; pin every dependency")
            out.append(line)
    return out


#: Folders of the package a Lambda never runs: ``make run``'s local store and runner.
LEFT_OUT = ("dev",)


def _copy_tree(src: Path, dst: Path, *, leave_out: Iterable[str] = ()) -> None:
    top = {src / name for name in leave_out}
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in _SKIP_DIRS
                                                       or n.endswith((".pyc", ".pyo"))
                                                       or Path(d) / n in top])


def _interpreter_for(version: str, explicit: str | None) -> str | None:
    """A Python of ``version`` to compile bytecode with, or None if none is at hand."""
    candidates = [explicit] if explicit else [sys.executable, f"python{version}"]
    for candidate in candidates:
        exe = shutil.which(candidate) or candidate
        try:
            proc = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and proc.stdout.strip() == version:
            return exe
    return None


def _pip_install(target: Path, requirements: Sequence[str], *, python_version: str,
                 platform: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--only-binary=:all:", "--no-compile", "--target", str(target),
           "--platform", platform, "--python-version", python_version, "--implementation", "cp",
           *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackageError("pip could not install the Lambda dependencies for Python "
                           f"{python_version} on {platform}:\n{proc.stderr.strip()[-2000:]}")
    for extra in target.glob("*.dist-info"):  # keep METADATA/licences, drop the install records
        (extra / "RECORD").unlink(missing_ok=True)
    shutil.rmtree(target / "bin", ignore_errors=True)
    for tests in target.glob("*/tests"):  # libraries' own test suites are never imported
        if tests.is_dir():
            shutil.rmtree(tests)


def _files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def write_zip(staging: Path, zip_path: Path) -> tuple[int, int]:
    """Zip ``staging`` reproducibly; returns (files, bytes)."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in _files(staging):
            info = zipfile.ZipInfo(path.relative_to(staging).as_posix(), ZIP_DATE)
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
            count += 1
    return count, zip_path.stat().st_size


def build(*, rules: Path, out: Path, python_version: str = LAMBDA_PYTHON,
          platform: str = LAMBDA_PLATFORM, with_boto3: bool = True,
          bytecode_python: str | None = None, template: Path = ROOT / "template.yaml",
          auth: str = "api-key", allow_demo: bool = False) -> Built:
    """Build the Lambda zip and the rendered template for ``rules`` into ``out``.

    Refuses rules unfit for a stack with ``auth`` (see the module docstring) unless
    ``allow_demo``, which returns the refusals as ``Built.warnings`` instead.
    """
    from broker.config import load_rules_file, production
    from broker.errors import RulesError
    from broker.deploy.cors import CorsError
    from broker.deploy.template import TemplateError, set_code_uri, update_template

    try:
        ruleset = load_rules_file(rules)
    except RulesError as exc:
        raise PackageError(f"refusing to package rules that do not load:\n{exc.message}") from None
    found = production.refusals(ruleset, auth=auth)
    refused = [r.words(str(rules)) for r in (production.placed(found, rules.read_bytes()) if found else ())]
    if refused and not allow_demo:
        raise PackageError(
            f"refusing to package rules that are not fit for production (--auth {auth}):\n"
            + "\n".join(f"  - {r}" for r in refused)
            + "\nfix them (the same list: broker check --production --auth " + auth + " " + str(rules)
            + "), or, for a trial stack nobody relies on, package them anyway with --allow-demo "
              "(make package ALLOW_DEMO=1)")
    try:  # before the slow part: the template refuses ACLs its bucket refuses, and rules without origins
        rendered = set_code_uri(update_template(template.read_text(), ruleset), "lambda.zip")
    except (TemplateError, CorsError) as exc:
        raise PackageError(f"refusing to package rules the stack cannot serve:\n{exc}") from None
    staging = out / "lambda"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _copy_tree(ROOT / "broker", staging / "broker", leave_out=LEFT_OUT)
    _copy_tree(ROOT / "schemas", staging / "schemas")
    shutil.copyfile(ROOT / "lambda_handler.py", staging / "lambda_handler.py")
    shutil.copyfile(rules, staging / "rules.yaml")
    _pip_install(staging, requirement_lines(REQUIREMENTS, with_boto3=with_boto3),
                 python_version=python_version, platform=platform)
    compiler = _interpreter_for(python_version, bytecode_python)
    if compiler:
        # unchecked-hash: the pyc is used as is; zip timestamps could never match the sources
        proc = subprocess.run([compiler, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                               "unchecked-hash", str(staging)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise PackageError(f"compiling bytecode failed:\n{proc.stdout}{proc.stderr}")
    zip_path = out / "lambda.zip"
    files, size = write_zip(staging, zip_path)
    template_path = out / "template.yaml"
    template_path.write_text(rendered)
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    return Built(zip_path, template_path, files, size, digest, compiler is not None, tuple(refused))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m broker.deploy.package``: build the zip and template, print a summary."""
    from broker.config.production import AUTH_MODES

    parser = argparse.ArgumentParser(
        prog="python -m broker.deploy.package",
        description="Build build/lambda.zip and build/template.yaml for one rules file.")
    parser.add_argument("--rules", default=str(ROOT / "rules.yaml"), help="rules file to bundle (default: rules.yaml)")
    parser.add_argument("--out", default=str(ROOT / "build"), help="output folder (default: build/)")
    parser.add_argument("--python-version", default=LAMBDA_PYTHON, help=f"target Python (default: {LAMBDA_PYTHON})")
    parser.add_argument("--platform", default=LAMBDA_PLATFORM,
                        help=f"wheel platform (default: {LAMBDA_PLATFORM}; manylinux2014_aarch64 for arm64)")
    parser.add_argument("--without-boto3", action="store_true",
                        help="use the Lambda runtime's boto3 instead of the pinned one")
    parser.add_argument("--bytecode-python", help="interpreter of the target version to compile bytecode "
                                                  "with (default: this one or pythonX.Y on PATH)")
    parser.add_argument("--auth", choices=list(AUTH_MODES), default="api-key",
                        help="how the stack recognises callers (as broker check --production --auth): api-key "
                             "(JwtIssuer and LambdaAuthorizerArn empty), jwt (JwtIssuer set) or lambda "
                             "(LambdaAuthorizerArn set); default: api-key")
    parser.add_argument("--allow-demo", action="store_true",
                        help="package rules that broker check --production refuses (demo API keys, http:// "
                             "origins, ...), each printed as a warning: for a trial stack nobody relies on")
    args = parser.parse_args(argv)
    try:
        built = build(rules=Path(args.rules), out=Path(args.out), python_version=args.python_version,
                      platform=args.platform, with_boto3=not args.without_boto3,
                      bytecode_python=args.bytecode_python, auth=args.auth, allow_demo=args.allow_demo)
    except PackageError as exc:
        print(f"make package: {exc}", file=sys.stderr)
        return 2
    if built.warnings:
        print("=" * 78 + f"\nWARNING: --allow-demo: these rules are NOT fit for production, packaged anyway "
              f"({len(built.warnings)} refusal(s) let through):", file=sys.stderr)
        for warning in built.warnings:
            print(f"  - {warning}", file=sys.stderr)
        print("Deploy this package only to a trial stack nobody relies on.\n" + "=" * 78, file=sys.stderr)
    print(f"{built.zip_path}: {built.files} files, {built.size / 1e6:.1f} MB, sha256 {built.sha256[:16]}")
    if not built.bytecode:
        print(f"  no Python {args.python_version} here, so no bytecode was compiled (cold starts "
              "compile in memory instead); add it with --bytecode-python PATH "
              "(make package LAMBDA_PYTHON=PATH)", file=sys.stderr)
    print(f"{built.template_path}: generated from {args.rules}; deploy with\n"
          f"  sam deploy --guided --template-file {built.template_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
