"""Codegen: render templates (render), write generated/ (build), import kernels (loader)."""

from tqgen.codegen.build import BuildReport, build
from tqgen.codegen.loader import kernel, kernel_module, source_path
from tqgen.codegen.render import environment, render, template_hash

__all__ = ["BuildReport", "build", "environment", "kernel", "kernel_module", "render", "source_path", "template_hash"]
