#!/usr/bin/env python3
"""Generates docs/recipes.md from csrc/config/recipe.proto, so the reference never drifts from the schema.

usage: tools/recipe_docs.py [--check]   (--check: exit 1 if docs/recipes.md is stale)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = os.path.join(ROOT, "csrc/config/recipe.proto")
DOC = os.path.join(ROOT, "docs/recipes.md")

HEADER = """# Recipe reference

Recipes are [Protobuf text format](https://protobuf.dev/reference/protobuf/textformat-spec/) files checked
against one schema, `csrc/config/recipe.proto`. This page is generated from that schema by
`tools/recipe_docs.py` (a test fails when it is stale).

```
moe-train --recipe FILE [--set field.path=value]... [--run-dir DIR]
```

- Unknown fields, wrong types and a singular field given twice are errors with `file:line:column`, the
  closest known field name and the list of known fields.
- `--set` overrides are typed and checked like the file: `--set train.steps=100`,
  `--set optimizer.lr=1e-3`, `--set schedule.decay=LINEAR`, `--set model.moe_layers=[0,2]` (a list
  replaces the whole list), `--set data.train_prefix=corpus/train` (strings need no quotes).
- `base: "other.textproto"` makes a recipe extend another (path relative to the file): the base is
  loaded first (it may have a base too; a cycle is an error), then every field the file sets replaces
  the base's — lists whole, sections field by field. `recipes/ablations/routing/` uses it so each
  variant is a few lines. Errors in a base name the base's file, line and column.
- After overrides every field gets its default and the whole recipe is validated; all problems are
  reported at once, each naming where the field was set (`file:line:column` in the recipe or its
  base, or the `--set` override), the field, its value and the fix. Nothing is written for a rejected
  recipe, nor for a run whose data is rejected.
- The resolved recipe (every field explicit) is written to `RUN_DIR/recipe.textproto`; it is itself a
  valid recipe that reproduces the run.
- Field names that scripts outside the code rely on stay stable: `train.steps`, `train.seed`,
  `parallel.tensor`, `parallel.expert`.

"""


def parse(proto):
    messages, enums, current, comment = {}, {}, None, []
    for raw in open(proto):
        line = raw.strip()
        if line.startswith("//"):
            comment.append(line[2:].strip())
            continue
        m = re.match(r"message (\w+) \{", line)
        if m:
            current = m.group(1)
            messages[current] = {"doc": " ".join(comment), "fields": []}
            comment = []
            continue
        m = re.match(r"enum (\w+) \{", line)
        if m:
            enums[m.group(1)] = []
            enum_name = m.group(1)
            comment = []
            continue
        m = re.match(r"([A-Z_]+) = \d+;", line)
        if m and enums:
            enums[enum_name].append(m.group(1))
            continue
        m = re.match(r"(optional|repeated) ([\w.]+) (\w+) = \d+(?: \[default = ([^\]]+)\])?;\s*(?://\s*(.*))?", line)
        if m and current:
            label, ftype, name, default, trailing = m.groups()
            doc = " ".join(comment + ([trailing] if trailing else []))
            messages[current]["fields"].append((label, ftype, name, default, doc))
            comment = []
            continue
        if not line:
            comment = []
    return messages, enums


def render(messages, enums):
    out = [HEADER]
    top = messages["Recipe"]["fields"]
    out.append("| section | type | meaning |\n|---|---|---|\n")
    for _, ftype, name, _, doc in top:
        out.append(f"| `{name}` | {ftype} | {doc} |\n")
    # Sections, then the messages nested in them (finetune.lora), each as its own table.
    sections = [(name, ftype) for _, ftype, name, _, _ in top if ftype in messages]
    while sections:
        name, ftype = sections.pop(0)
        msg = messages[ftype]
        out.append(f"\n## `{name}` ({ftype})\n\n")
        if msg["doc"]:
            out.append(msg["doc"] + "\n\n")
        out.append("| field | type | default | meaning |\n|---|---|---|---|\n")
        for label, t, fname, default, doc in msg["fields"]:
            shown_type = t + (f" ({', '.join(enums[t])})" if t in enums else "")
            if label == "repeated":
                shown_type = f"list of {shown_type}"
            if t in messages:
                sections.append((f"{name}.{fname}", t))
                dflt = "see below"
            else:
                dflt = default if default is not None else ("empty" if label == "repeated" or t == "string" else "0")
            out.append(f"| `{name}.{fname}` | {shown_type} | `{dflt}` | {doc} |\n")
    return "".join(out)


def main():
    text = render(*parse(PROTO))
    if "--check" in sys.argv[1:]:
        current = open(DOC).read() if os.path.exists(DOC) else ""
        if current != text:
            sys.exit("docs/recipes.md is stale: run python3 tools/recipe_docs.py")
        print("docs/recipes.md is up to date")
        return
    open(DOC, "w").write(text)


if __name__ == "__main__":
    main()
