"""The configuration table printed by `penny config` and kept in the README."""

from __future__ import annotations

from pydantic import AliasChoices

from penny.settings import Settings


def environment_names(field_name: str) -> list[str]:
    field = Settings.model_fields[field_name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"PENNY_{field_name.upper()}"]


def configuration_table(settings: Settings | None = None) -> str:
    header = "| Environment variable | Default | Meaning |"
    if settings is not None:
        header = "| Environment variable | Default | Meaning | Current |"
    rows = [header, "|" + "---|" * (4 if settings is not None else 3)]
    for name, field in Settings.model_fields.items():
        default = "(unset)" if field.default is None else f"`{field.default}`"
        variables = " / ".join(f"`{variable}`" for variable in environment_names(name))
        row = f"| {variables} | {default} | {field.description or ''} |"
        if settings is not None:
            row += f" `{getattr(settings, name)}` |"
        rows.append(row)
    return "\n".join(rows)
