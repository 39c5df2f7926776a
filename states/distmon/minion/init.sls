{#-
distmon.minion: what a test minion needs to run pytest and ship its results.

- pytest and paramiko for Salt's own Python (the returner and pytestrun run there;
  on a onedir Salt through salt-pip into its extras directory) and for the test
  interpreter (`distmon:python`, a virtualenv's python);
- the returner's config file (storage host, port, user, key path, known_hosts, inbox:
  no secret) for every salt-call and the minion daemon at its next start;
- the SFTP private key (0600, its text never shown in changes or show_sls: it is read
  from pillar by path) and the pinned known_hosts (0644) when pillar carries them;
- the tests directory, filled from `distmon:tests_source` (default salt://sample_tests);
- the schedule, by `distmon:scheduler`:
  salt (default): two jobs in the minion's own scheduler (schedule.present), so
    `schedule.list`, `schedule.run_job`, `schedule.disable_job` manage them: the test run
    (pytestrun.run with the distmon returner, splay, maxrunning 1) and a periodic
    distmon.flush for results spooled while the storage host was away. Without a
    running salt-minion (salt-call --local) the persisted schedule file is edited and
    the daemon picks the jobs up when it starts;
  cron: the same two as crontab lines, for machines without a running salt-minion
    (masterless). Each goes through a check script that prints nothing unless salt-call
    failed to produce a result, so cron mails only when something went wrong;
  none: neither.
  The jobs of the scheduler not chosen are removed, so switching never runs tests twice.

Every key and its default: states/distmon/defaults.yaml and pillar.example.
-#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import distmon, salt_python, test_python, pip_bin_env, config_dir,
    schedule_offline with context %}
{%- set key_dir = distmon.key.rsplit('/', 1)[0] %}
{%- set cron = distmon.cron %}
{%- set run_kwargs = {} %}
{%- if distmon.pytest_args %}{%- do run_kwargs.update({'args': distmon.pytest_args}) %}{%- endif %}
{%- if test_python != salt_python %}{%- do run_kwargs.update({'python': test_python}) %}{%- endif %}
{%- set has_crontab = salt['cmd.which']('crontab') %}
{#- The returner's keys, and only those: the file (and so show_sls) never sees private_key. #}
{%- set returner_options = {} %}
{%- for option in ('host', 'port', 'user', 'key', 'known_hosts', 'remote_inbox', 'spool_dir', 'deadline',
                   'spool_max_files', 'spool_max_bytes', 'grains', 'all_jobs', 'sign') %}
{%-   if distmon.get(option) is not none and distmon.get(option) != '' %}
{%-     do returner_options.update({option: distmon[option]}) %}
{%-   endif %}
{%- endfor %}

{%- if distmon.scheduler not in ('salt', 'cron', 'none') %}

{#- A typo must not quietly leave a minion without scheduled runs. #}
distmon-scheduler-invalid:
  test.fail_without_changes:
{%-   set problem = "distmon:scheduler must be salt, cron or none, not " ~ (distmon.scheduler | string) %}
    - name: {{ problem | json }}
    - comment: {{ problem | json }}
{%- endif %}

distmon-pip-salt-python:
  pip.installed:
    - pkgs: {{ distmon.pip_packages | json }}
{%- if pip_bin_env %}
    - bin_env: {{ pip_bin_env | json }}
{%- endif %}

{%- if test_python != salt_python %}

distmon-pip-test-python:
  pip.installed:
    - pkgs: {{ distmon.pip_packages | json }}
    - bin_env: {{ test_python | json }}
{%- endif %}

distmon-returner-config:
  file.managed:
    - name: {{ distmon.config_file | json }}
    - source: salt://{{ tplroot }}/files/returner.conf.jinja
    - template: jinja
    - makedirs: True
    - user: root
    - group: root
    - mode: '0644'
    - context:
        options: {{ returner_options | json }}

{%- if distmon.private_key %}

distmon-key-dir:
  file.directory:
    - name: {{ key_dir | json }}
    - user: root
    - group: root
    - mode: '0700'
    - makedirs: True

distmon-private-key:
  file.managed:
    - name: {{ distmon.key | json }}
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
    - name: {{ distmon.known_hosts | json }}
    - contents: {{ distmon.host_keys | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True
{%- endif %}

distmon-tests-dir:
  file.recurse:
    - name: {{ distmon.tests_dir | json }}
    - source: {{ distmon.tests_source | json }}
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'
    - include_empty: True
    - exclude_pat: E@(__pycache__|\.pyc$)

{#- -- Salt's scheduler ------------------------------------------------------------ #}
{%- for job, function, args, kwargs, returner in (
      ('run', 'pytestrun.run', [distmon.tests_dir], run_kwargs, 'distmon'),
      ('flush', 'distmon.flush', [], {}, none)) %}
{%-   set settings = distmon.schedule if job == 'run' else distmon.flush_schedule %}
{%-   if distmon.scheduler == 'salt' %}

distmon-schedule-{{ job }}:
  schedule.present:
    - name: {{ settings.name | json }}
    - function: {{ function }}
{%-     if args %}
    - job_args: {{ args | json }}
{%-     endif %}
{%-     if kwargs %}
    - job_kwargs: {{ kwargs | json }}
{%-     endif %}
{%-     if returner %}
    - returner: {{ returner }}
{%-     endif %}
{%-     for option, value in settings | dictsort if option != 'name' %}
    - {{ option }}: {{ value | json }}
{%-     endfor %}
{%-     if schedule_offline %}
    - offline: True
{%-     endif %}
    - require:
      - pip: distmon-pip-salt-python
      - file: distmon-returner-config
{%-     if job == 'run' %}
      - file: distmon-tests-dir
{%-     endif %}
{%-   else %}

distmon-schedule-{{ job }}-absent:
  schedule.absent:
    - name: {{ settings.name | json }}
{%-     if schedule_offline %}
    - offline: True
{%-     endif %}
{%-   endif %}
{%- endfor %}

{#- -- cron --------------------------------------------------------------------- #}
{%- if distmon.scheduler == 'cron' %}
{%-   set check = (salt_python | quote) ~ ' ' ~ (cron.check_script | quote) ~ ' ' ~ (cron.salt_call | quote)
        ~ ' -c ' ~ (config_dir | quote) %}
{#-   cron hands the line to /bin/sh: every value from pillar is shell-quoted. #}
{%-   set commands = {
        'run': check ~ ' pytestrun.run ' ~ (distmon.tests_dir | quote)
               ~ ((' args=' ~ (distmon.pytest_args | quote)) if distmon.pytest_args else '')
               ~ ((' python=' ~ (test_python | quote)) if test_python != salt_python else '')
               ~ ' --return distmon',
        'flush': check ~ ' distmon.flush'} %}

distmon-cron-package:
  pkg.installed:
    - name: {{ distmon.cron_package | json }}

distmon-cron-check-script:
  file.managed:
    - name: {{ cron.check_script | json }}
    - source: salt://{{ tplroot }}/files/distmon-cron.py
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True
{%- endif %}

{%- for job in ('run', 'flush') %}
{%-   set entry = cron[job] %}
{%-   if distmon.scheduler == 'cron' %}

distmon-cron-{{ job }}:
  cron.present:
    - name: {{ commands[job] | replace('%', '\\%') | json }}  {#- a bare % is a newline to cron #}
    - identifier: {{ entry.identifier | json }}
    - user: {{ cron.user | json }}
    {%- for field in ('minute', 'hour', 'daymonth', 'month', 'dayweek') %}
    - {{ field }}: {{ entry.get(field, '*') | string | json }}
    {%- endfor %}
    - require:
      - pkg: distmon-cron-package
      - file: distmon-cron-check-script
      - file: distmon-returner-config
{%-     if job == 'run' %}
      - pip: distmon-pip-salt-python
      - file: distmon-tests-dir
{%-     endif %}
{%-   elif has_crontab %}

distmon-cron-{{ job }}-absent:
  cron.absent:
    - name: distmon-{{ job }}
    - identifier: {{ entry.identifier | json }}
    - user: {{ cron.user | json }}
{%-   endif %}
{%- endfor %}
