{#-
distmon.minion.clean: removes what distmon.minion installed: both scheduler jobs (Salt's
and cron's), the cron check script, the returner's config file, the tests directory, and
the key and known_hosts files when the state deployed them (pillar `private_key`,
`host_keys`). Spooled results stay (`distmon.spool` lists them). pip packages are
uninstalled only with `distmon:clean:pip_packages: true`: Salt's own Python may need them.
-#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import distmon, salt_python, test_python, pip_bin_env,
    schedule_offline with context %}

{%- for job, settings in (('run', distmon.schedule), ('flush', distmon.flush_schedule)) %}

distmon-clean-schedule-{{ job }}:
  schedule.absent:
    - name: {{ settings.name | json }}
{%-   if schedule_offline %}
    - offline: True
{%-   endif %}
{%-   if salt['cmd.which']('crontab') %}

distmon-clean-cron-{{ job }}:
  cron.absent:
    - name: distmon-{{ job }}
    - identifier: {{ distmon.cron[job].identifier | json }}
    - user: {{ distmon.cron.user | json }}
{%-   endif %}
{%- endfor %}

{%- set files = [('cron-check-script', distmon.cron.check_script), ('returner-config', distmon.config_file),
                  ('tests-dir', distmon.tests_dir)] %}
{%- if distmon.private_key %}{%- do files.append(('private-key', distmon.key)) %}{%- endif %}
{%- if distmon.host_keys %}{%- do files.append(('known-hosts', distmon.known_hosts)) %}{%- endif %}
{%- for what, path in files %}

distmon-clean-{{ what }}:
  file.absent:
    - name: {{ path | json }}
{%- endfor %}

{%- if distmon.clean.pip_packages %}

distmon-clean-pip-salt-python:
  pip.removed:
    - names: {{ distmon.pip_packages | json }}
{%-   if pip_bin_env %}
    - bin_env: {{ pip_bin_env | json }}
{%-   endif %}
{%-   if test_python != salt_python %}

distmon-clean-pip-test-python:
  pip.removed:
    - names: {{ distmon.pip_packages | json }}
    - bin_env: {{ test_python | json }}
{%-   endif %}
{%- endif %}
