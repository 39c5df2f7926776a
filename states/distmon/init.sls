{#-
distmon: the formula's entry point (`salt '*' state.apply distmon`).

Applies the state of each distmon role the machine has (grain `roles` or pillar
`distmon:roles`): distmon.minion for `distmon-minion`, distmon.host for `distmon-host`.
A machine with neither role is a test minion: distmon.minion.
distmon.clean removes what these installed.
-#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import roles with context %}
include:
{%- if 'distmon-host' in roles %}
  - {{ tplroot }}.host
{%- endif %}
{%- if 'distmon-minion' in roles or 'distmon-host' not in roles %}
  - {{ tplroot }}.minion
{%- endif %}
