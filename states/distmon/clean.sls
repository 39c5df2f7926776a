{#-
distmon.clean: removes what `state.apply distmon` installed, role by role (as init.sls
chooses them). Results still spooled on a minion are kept; the storage host's data
only goes with `distmon:clean:data: true`, pip packages only with
`distmon:clean:pip_packages: true`.
-#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import roles with context %}
include:
{%- if 'distmon-host' in roles %}
  - {{ tplroot }}.host.clean
{%- endif %}
{%- if 'distmon-minion' in roles or 'distmon-host' not in roles %}
  - {{ tplroot }}.minion.clean
{%- endif %}
