"""Our Jinja interpreter (data/jinja*.cpp) against jinja2 itself, in the environment transformers builds for chat
templates (transformers.utils.chat_template_utils._compile_jinja_template: ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, its tojson / raise_exception / namespace / dict).

Each case is a small template and a context. The rendered text must be identical; where jinja2 raises, ours must
fail too (the message need not match). Exits 1 with one line per mismatch.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from transformers.utils.chat_template_utils import _compile_jinja_template

MSGS = [
    {"role": "system", "content": "  Be brief.\n"},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What's 2+2? ünïcödé ✓"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & \"later\"",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
CTX = {"messages": MSGS, "tools": TOOLS, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>",
       "n": 7, "x": 2.5, "s": "  Hello World  ", "empty": "", "none": None, "lst": [3, 1, 2], "d": {"b": 1, "a": [1, 2]},
       "flag": True, "words": ["a", "B", "a", "c"]}

# (template, context override or None)
CASES = [
    # text, whitespace control, trim_blocks / lstrip_blocks
    ("plain text\n", None),
    ("a\n{% if true %}\nb\n{% endif %}\nc", None),
    ("  {% if true %}x{% endif %}  \n  {%- if true %}y{% endif -%}  \n z", None),
    ("{{ 'a' }}\n{{ 'b' }}\n", None),
    ("{# comment #}\nx {#- c -#} y\n  {# indented comment #}\nz", None),
    ("{%+ if true %}x{% endif +%}\ny", None),
    ("line1\r\nline2\r\n{% if true %}\r\nz\r\n{% endif %}\r\n", None),
    ("{{- '  a  ' -}}   {{ 'b' }}", None),
    ("{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n", None),
    ("x {% if true -%}\n\n   y   {%- endif %} z", None),
    # literals and operators
    ("{{ 1 + 2 * 3 - 4 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }}", None),
    ("{{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-7 }} {{ 3.0 }} {{ 10 / 4 }} {{ 1/3 }}", None),
    ("{{ 'a' ~ 1 ~ none ~ true ~ 2.0 }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ [1, 2] + [3] }}", None),
    ("{{ \"dq\\n\\t\\\\\" }}{{ 'sq \\'q\\'' }}{{ '\\u00e9\\x41' }}{{ 'a' 'b' }}", None),
    ("{{ [1, 'a', none, true, 1.5, [2], {'k': 'v'}] }} {{ {'a': 1, 'b': 'x'} }} {{ (1, 2) }} {{ () }}", None),
    ("{{ 1 == 1.0 }} {{ 1 != 2 }} {{ 'a' < 'b' }} {{ [1,2] < [1,3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", None),
    ("{{ 'a' in 'cat' }} {{ 'z' not in 'cat' }} {{ 2 in lst }} {{ 'b' in d }} {{ 'q' in d }}", None),
    ("{{ true and 'x' }} {{ false or 'y' }} {{ not none }} {{ none or 0 or '' or 'last' }} {{ not 1 == 2 }}", None),
    ("{{ 'yes' if flag else 'no' }} {{ 'yes' if none }}|{{ 1 if 0 else 2 if 0 else 3 }}", None),
    ("{{ -n }} {{ +x }} {{ -x|abs }} {{ - 3 ** 2 }}", None),
    ("{{ True }} {{ False }} {{ None }} {{ true }}", None),
    # attribute, item, slicing
    ("{{ messages[0].role }} {{ messages[-1]['content'] }} {{ messages[9] }} {{ d.b }} {{ d['a'][1] }} {{ d.zz }}", None),
    ("{{ s[2:7] }}|{{ s[::-1] }}|{{ lst[::-1] }}|{{ lst[1:] }}|{{ lst[:-1] }}|{{ 'héllo'[1:3] }}|{{ lst[::2] }}", None),
    ("{{ messages[1:]|length }} {{ 'abc'[-1] }} {{ lst.0 }} {{ s[100:] }}|", None),
    ("{{ d.items() | list }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.get('b') }} {{ d.get('z') }} "
     "{{ d.get('z', 5) }}", None),
    # undefined
    ("[{{ missing }}] {{ missing is defined }} {{ missing is undefined }} {{ missing|length }} "
     "{{ missing|default('dflt') }} {{ none|default('nd') }} {{ ''|default('e', true) }}", None),
    ("{% for x in missing %}x{% else %}empty{% endfor %} {{ 'a' in missing }} {{ missing == missing }}", None),
    ("{{ missing.attr }}", None),
    ("{{ missing['k'] }}", None),
    ("{{ messages[0].nothing }}|{{ messages[0].nothing is defined }}|{{ none.x }}|{{ (1).x }}", None),
    ("{{ missing + 1 }}", None),
    ("{% if missing %}y{% else %}n{% endif %}{% if not missing %}N{% endif %}", None),
    # tests
    ("{{ s is string }} {{ n is number }} {{ x is number }} {{ flag is number }} {{ d is mapping }} "
     "{{ lst is iterable }} {{ s is iterable }} {{ n is iterable }} {{ lst is sequence }} {{ none is none }} "
     "{{ flag is true }} {{ 1 is true }} {{ false is false }} {{ n is odd }} {{ n is even }} {{ 9 is divisibleby 3 }} "
     "{{ n is integer }} {{ x is float }} {{ flag is boolean }} {{ 'a' is lower }} {{ 3 is eq 3 }} "
     "{{ 'a' is in 'abc' }} {{ missing is iterable }} {{ range is callable }} {{ d is not mapping }}", None),
    # filters
    ("{{ s|trim }}|{{ s|trim('  H') }}|{{ s|upper }}|{{ s|lower }}|{{ 'hello wORLD-x(y'|title }}|"
     "{{ 'hELLO'|capitalize }}|{{ lst|length }}|{{ s|count }}|{{ d|length }}", None),
    ("{{ words|join(', ') }}|{{ lst|join }}|{{ messages|map(attribute='role')|join('/') }}|{{ words|first }}"
     "|{{ words|last }}|{{ words|unique|list }}|{{ words|reverse|list }}|{{ 'abc'|reverse }}|{{ lst|sort }}"
     "|{{ words|sort|list }}|{{ lst|sum }}|{{ lst|list }}|{{ 'ab'|list }}|{{ d|list }}", None),
    ("{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }}|"
     "{{ messages|rejectattr('role', 'eq', 'user')|list|length }}|{{ lst|select('odd')|list }}|"
     "{{ messages|selectattr('role')|list|length }}|{{ [0, 1, '', 'a']|select|list }}|{{ lst|map('string')|join }}",
     None),
    ("{{ n|string ~ 'x' }} {{ '42'|int + 1 }} {{ '4.5'|float }} {{ 'zz'|int }} {{ 'zz'|int(7) }} {{ 3.9|int }} "
     "{{ 2|float }} {{ '<a href=\"x\">'|safe }} {{ '<&>'|e }} {{ 'abcb'|replace('b', 'X') }} "
     "{{ 'abcb'|replace('b', 'X', 1) }} {{ d|items|list }}", None),
    ("{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(2, blank=true) }}|"
     "{{ 'x'|indent('--', first=true) }}", None),
    ("{{ tools|tojson }}\n{{ tools[0]|tojson(indent=4) }}\n{{ d|tojson(indent=2) }}\n{{ 'é\"<>&\\n'|tojson }}\n"
     "{{ [1.0, 2.5, none, true, {}] | tojson }}\n{{ {'z': 1, 'a': 2}|tojson }}", None),
    ("{{ messages|tojson }}", None),
    ("{{ missing|tojson }}", None),
    # string methods
    ("{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ s.split() }}|"
     "{{ 'a,b,,c'.split(',') }}|{{ 'a b c'.split(' ', 1) }}|{{ s.startswith('  H') }}|{{ s.endswith(('x', '  ')) }}"
     "|{{ s.upper() }}|{{ 'ab'.replace('a', 'c') }}|{{ 'hello world'.title() }}|{{ 'x{}y{}'.format(1, 'z') }}|"
     "{{ '-'.join(['a', 'b']) }}|{{ 'abcabc'.find('c') }}|{{ 'abcabc'.count('bc') }}|{{ 'a\\nb'.splitlines() }}",
     None),
    ("{{ '<think>\\nr\\n</think>\\n\\nans'.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}|"
     "{{ '<think>r</think>\\nans'.split('</think>')[-1].lstrip('\\n') }}", None),
    # statements
    ("{% set a = 1 %}{% set b, c = [2, 3] %}{{ a }}{{ b }}{{ c }}{% set t = 1, 2 %}{{ t }}", None),
    ("{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}"
     "{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}", None),
    ("{% set v = 'outer' %}{% for i in range(2) %}{% set v = 'inner' ~ i %}{{ v }}{% endfor %} {{ v }}", None),
    ("{% if true %}{% set w = 'if-set' %}{% endif %}{{ w }}", None),
    ("{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/"
     "{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.previtem.role if loop.previtem is defined }}/"
     "{{ loop.nextitem.role if loop.nextitem is defined else 'END' }};{% endfor %}", None),
    ("{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m.role[0] }}{% endfor %}", None),
    ("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}"
     "{{ i }}{% endfor %}|{% for i in range(3, 0, -1) %}{{ i }}{% endfor %}|{% for i in [] %}x{% else %}e"
     "{% endfor %}", None),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}"
     "{% for c in 'héy' %}[{{ c }}]{% endfor %}", None),
    ("{% if n > 10 %}big{% elif n > 5 %}mid{% else %}small{% endif %}", None),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} "
     "{{ greet('b', '?') }} {{ greet(punct='.', name='c') }}", None),
    ("{% macro wrap(t) %}[{{ caller() }}:{{ t }}]{% endmacro %}{% call wrap('x') %}inside{% endcall %}", None),
    ("{% set block %}\n  captured {{ n }}\n{% endset %}[{{ block }}]{% filter upper %}up {{ s }}{% endfilter %}",
     None),
    ("{% generation %}gen {{ n }}{% endgeneration %}", None),
    ("{{ raise_exception('nope: ' ~ n) }}", None),
    ("{{ dict(a=1, b='x') }} {{ namespace(a=1).a }} {{ range(3)|list }} {{ range(1, 7, 2)|list }}", None),
    ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|im_start|>user\\n' + m['content'] | trim + "
     "'<|im_end|>\\n' }}{% endif %}{% endfor %}", None),
    ("{%- for m in messages %}\n    {%- if loop.first and m.role == 'system' %}\n        {{- '<<' + m.content + '>>' }}"
     "\n    {%- else %}\n        {{- m.role + ': ' + m.content + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n"
     "{%- if add_generation_prompt %}\n    {{- 'assistant:' }}\n{%- endif %}\n", None),
    # errors: both must fail
    ("{{ 1 + 'a' }}", None),
    ("{{ 'a' < 1 }}", None),
    ("{% for %}", None),
    ("{% if true %}unclosed", None),
    ("{{ messages.append(1) }}", None),
    ("{{ 1 / 0 }}", None),
    ("{{ n|nosuchfilter }}", None),
    ("{% include 'x' %}", None),
    ("{{ 'a' 'b' + }}", None),
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", None),
    ("{{ none + 1 }}", None),
    ("{% set d2 = {} %}{% set d2.x = 1 %}", None),
]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--render-chat", required=True, type=Path, help="build/bin/render_chat")
    p.add_argument("--work-dir", required=True, type=Path)
    args = p.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)

    expected = []
    lines = []
    for tmpl, override in CASES:
        ctx = dict(CTX, **(override or {}))
        try:
            expected.append(("ok", _compile_jinja_template(tmpl).render(**ctx)))
        except Exception as e:  # noqa: BLE001 - any jinja2 failure means ours must fail too
            expected.append(("error", f"{type(e).__name__}: {e}"))
        lines.append(json.dumps({"template": tmpl, "context": ctx}, ensure_ascii=False))
    cases_file = args.work_dir / "jinja_cases.jsonl"
    cases_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = subprocess.run([str(args.render_chat), "jinja", str(cases_file)], capture_output=True, text=True, check=True)
    got = [json.loads(line) for line in out.stdout.splitlines()]
    if len(got) != len(CASES):
        sys.exit(f"FAIL: render_chat gave {len(got)} results for {len(CASES)} cases\n{out.stderr}")

    failures = 0
    for (tmpl, _), (kind, want), ours in zip(CASES, expected, got):
        if kind == "ok" and ours.get("text") != want:
            failures += 1
            print(f"MISMATCH template {tmpl!r}\n  jinja2: {want!r}\n  ours:   {ours!r}")
        elif kind == "error" and "error" not in ours:
            failures += 1
            print(f"MISSING ERROR template {tmpl!r}\n  jinja2 raised {want}\n  ours rendered {ours.get('text')!r}")
    print(f"{len(CASES) - failures}/{len(CASES)} templates render as jinja2 renders them")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
