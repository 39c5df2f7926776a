{#-
distmon.minion: what a test minion needs to run pytest and ship its results.

- pytest and paramiko for the minion's own Python (the returner and pytestrun run
  there) and for the test interpreter (`distmon:python`, a virtualenv's python);
- the returner's config file (storage host, port, user, key, known_hosts, inbox)
  written from pillar, read by every new salt-call (the cron job) and by the
  minion daemon at its next start;
- the SFTP private key (0600) and the pinned known_hosts (0644) when pillar
  carries them (`distmon:private_key`, `distmon:host_keys`);
- the tests directory, filled from `distmon:tests_source` (default salt://sample_tests);
- cron: the scheduled test run with the distmon returner, and a periodic
  `distmon.flush` for results spooled while the storage host was away.

Every key and its default: states/distmon/defaults.yaml and pillar.example.
-#}
{%- from "distmon/map.jinja" import distmon, salt_python, test_python, config_dir with context %}
{%- set key_dir = distmon.key.rsplit('/', 1)[0] %}
{%- set known_hosts_dir = distmon.known_hosts.rsplit('/', 1)[0] %}
{%- set salt_call = (distmon.salt_call | quote) ~ ' -c ' ~ (config_dir | quote) %}
{#- cron hands the line to /bin/sh: every value from pillar is shell-quoted. #}
{%- set run_command = salt_call ~ ' pytestrun.run ' ~ (distmon.tests_dir | quote)
      ~ ((' args=' ~ (distmon.pytest_args | quote)) if distmon.pytest_args else '')
      ~ ((' python=' ~ (test_python | quote)) if test_python != salt_python else '')
      ~ ' --return distmon --out quiet -l quiet' %}
{%- set flush_command = salt_call ~ ' distmon.flush --out quiet -l quiet' %}

distmon-pip-salt-python:
  pip.installed:
    - pkgs: {{ distmon.pip_packages | json }}
    - bin_env: {{ salt_python }}

{%- if test_python != salt_python %}

distmon-pip-test-python:
  pip.installed:
    - pkgs: {{ distmon.pip_packages | json }}
    - bin_env: {{ test_python }}
{%- endif %}

distmon-returner-config:
  file.managed:
    - name: {{ distmon.config_file }}
    - source: salt://distmon/files/returner.conf.jinja
    - template: jinja
    - makedirs: True
    - user: root
    - group: root
    - mode: '0644'
    - context:
        distmon: {{ distmon | json }}

{%- if distmon.private_key %}

distmon-key-dir:
  file.directory:
    - name: {{ key_dir }}
    - user: root
    - group: root
    - mode: '0700'
    - makedirs: True

distmon-private-key:
  file.managed:
    - name: {{ distmon.key }}
    - contents_pillar: distmon:private_key
    - user: root
    - group: root
    - mode: '0600'
    - show_changes: False
    - require:
      - file: distmon-key-dir
{%- endif %}

{%- if distmon.host_keys %}

distmon-known-hosts:
  file.managed:
    - name: {{ distmon.known_hosts }}
    - contents: {{ distmon.host_keys | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True
{%- endif %}

distmon-tests-dir:
  file.recurse:
    - name: {{ distmon.tests_dir }}
    - source: {{ distmon.tests_source }}
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'
    - include_empty: True
    - exclude_pat: E@(__pycache__|\.pyc$)

distmon-cron-run:
  cron.present:
    - name: {{ run_command | replace('%', '\\%') | json }}  {#- a bare % is a newline to cron #}
    - identifier: {{ distmon.cron_identifier }}
    - user: {{ distmon.cron_user }}
    {%- for field in ('minute', 'hour', 'daymonth', 'month', 'dayweek') %}
    - {{ field }}: {{ distmon.schedule.get(field, '*') | string | json }}
    {%- endfor %}
    - require:
      - pip: distmon-pip-salt-python
      - file: distmon-returner-config
      - file: distmon-tests-dir

distmon-cron-flush:
  cron.present:
    - name: {{ flush_command | json }}
    - identifier: {{ distmon.flush_identifier }}
    - user: {{ distmon.cron_user }}
    {%- for field in ('minute', 'hour', 'daymonth', 'month', 'dayweek') %}
    - {{ field }}: {{ distmon.flush_schedule.get(field, '*') | string | json }}
    {%- endfor %}
    - require:
      - file: distmon-returner-config
