{#-
distmon.host: the storage host the minions upload their results to.

- the packages it needs (`distmon:storage:packages`, per os_family: openssh-server and
  what makes the dashboard's virtualenv);
- an SFTP-only account (no shell) whose sshd Match block forces internal-sftp
  and chroots it; sshd demands every component of the chroot path be root-owned
  and not group/world writable, so the chroot is root:root 0755 and the inbox
  inside it belongs to the account;
- the minions' public keys (pillar `distmon:storage:authorized_keys`), each
  with `restrict`;
- the Match block as a drop-in (`distmon:storage:sshd_config`, default
  /etc/ssh/sshd_config.d/distmon.conf), never an edit of the main sshd_config
  (Debian and Ubuntu include sshd_config.d/*.conf; elsewhere add the Include);
  `sshd -t` checks the result and sshd is reloaded only when that passed
  (systemd hosts; not in a scratch root; the service is `ssh` on Debian, `sshd` on
  RedHat and Suse: osfamilymap.yaml);
- the database, archive and quarantine directories, and the settings file that names them
  (`distmon:storage:env_file`, /etc/distmon/dashboard.env: read by the unit, and found by
  `python -m dashboard` by itself, so an admin's CLI acts on the service's store);
- the dashboard (with its ingester) in its own virtualenv, run by a systemd
  unit where systemd runs. It moves ingested files out of the inbox, so it runs
  as the account that owns the inbox;
- the admin CLI `distmon-admin` (`distmon:storage:dashboard:admin_command`, default
  /usr/local/bin/distmon-admin): `python -m dashboard` from that virtualenv with the settings
  file, run as that account (root is dropped to it: a root-owned -wal/-shm file beside the
  database would lock the service out).

`distmon:storage:root` prefixes every path (a scratch root for trials: then
no package, account, sshd check or reload and no service are touched).
Every key and its default: states/distmon/defaults.yaml and pillar.example;
distmon.host.clean removes what this installs.
-#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/host/paths.jinja" import storage, dashboard, root, scratch, chroot, inbox,
    authorized_keys_file, sshd_config, db_path, env_file, app_dir, venv, admin_command, owner, systemd with context %}

{%- if not scratch %}

distmon-host-packages:
  pkg.installed:
    - pkgs: {{ storage.packages | json }}
{%- endif %}

{%- if storage.manage_user and not scratch %}

distmon-sftp-user:
  user.present:
    - name: {{ storage.sftp_user }}
    - system: True
    - createhome: False
    - home: /nonexistent
    - shell: {{ storage.nologin_shell }}
    - usergroup: True
{%- endif %}

distmon-chroot:
  file.directory:
    - name: {{ chroot }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True

distmon-inbox:
  file.directory:
    - name: {{ inbox }}
    - user: {{ owner }}
    - group: {{ owner }}
    - mode: '0755'
    - require:
      - file: distmon-chroot
      {%- if storage.manage_user and not scratch %}
      - user: distmon-sftp-user
      {%- endif %}

distmon-authorized-keys:
  file.managed:
    - name: {{ authorized_keys_file }}
    - source: salt://{{ tplroot }}/files/authorized_keys.jinja
    - template: jinja
    - context:
        keys: {{ storage.authorized_keys | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True

distmon-sshd-match:
  file.managed:
    - name: {{ sshd_config }}
    - source: salt://{{ tplroot }}/files/sshd_distmon.conf.jinja
    - template: jinja
    - context:
        sftp_user: {{ storage.sftp_user | json }}
        chroot: {{ chroot | json }}
        authorized_keys_file: {{ authorized_keys_file | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True

{%- if not scratch %}

distmon-sshd-check:
  cmd.run:
    - name: {{ storage.sshd_bin }} -t
    - onchanges:
      - file: distmon-sshd-match
      - file: distmon-authorized-keys
    - require:
      - pkg: distmon-host-packages
{%-   if systemd %}

distmon-sshd-reload:
  service.running:
    - name: {{ storage.sshd_service }}
    - reload: True
    - watch:
      - file: distmon-sshd-match
    - require:
      - cmd: distmon-sshd-check
{%-   endif %}
{%- endif %}

{%- for name, path in (('db', db_path.rsplit('/', 1)[0]), ('archive', root ~ storage.archive_dir),
                       ('quarantine', root ~ storage.quarantine_dir)) %}

distmon-{{ name }}-dir:
  file.directory:
    - name: {{ path }}
    - user: {{ owner }}
    - group: {{ owner }}
    - mode: '0750'
    - makedirs: True
{%- endfor %}

distmon-dashboard-env:
  file.managed:
    - name: {{ env_file }}
    - source: salt://{{ tplroot }}/files/dashboard.env.jinja
    - template: jinja
    - context:
        db_path: {{ db_path | json }}
        inbox: {{ inbox | json }}
        archive_dir: {{ (root ~ storage.archive_dir) | json }}
        quarantine_dir: {{ (root ~ storage.quarantine_dir) | json }}
        pubkeys_dir: {{ storage.get('pubkeys_dir', '') | json }}
        allowed_hosts: {{ dashboard.allowed_hosts | json }}
        trusted_proxies: {{ dashboard.trusted_proxies | json }}
        limit_concurrency: {{ dashboard.limit_concurrency | int }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True

{%- if dashboard.enabled %}

distmon-dashboard-code:
  file.recurse:
    - name: {{ app_dir }}/dashboard
    - source: {{ dashboard.source }}
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'
    - clean: True
    - exclude_pat: E@(__pycache__|\.pyc$)

distmon-dashboard-requirements:
  file.managed:
    - name: {{ app_dir }}/requirements_host.txt
    - source: {{ dashboard.requirements }}
    - mode: '0644'
    - makedirs: True

distmon-dashboard-constraints:
  file.managed:
    - name: {{ app_dir }}/constraints.txt
    - source: {{ dashboard.constraints }}
    - mode: '0644'
    - makedirs: True

distmon-dashboard-venv:
  virtualenv.managed:
    - name: {{ venv }}
    - venv_bin: {{ dashboard.python }}
    - requirements: {{ app_dir }}/requirements_host.txt
    - env_vars:
        PIP_CONSTRAINT: {{ app_dir }}/constraints.txt
    - require:
      - file: distmon-dashboard-requirements
      - file: distmon-dashboard-constraints
{%-   if not scratch %}
      - pkg: distmon-host-packages
{%-   endif %}

distmon-admin-command:
  file.managed:
    - name: {{ admin_command | json }}
    - source: salt://{{ tplroot }}/files/distmon-admin.sh.jinja
    - template: jinja
    - context:
        user: {{ owner | json }}
        venv: {{ venv | json }}
        app_dir: {{ app_dir | json }}
        env_file: {{ env_file | json }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True
{%-   if systemd %}

distmon-dashboard-unit:
  file.managed:
    - name: /etc/systemd/system/{{ dashboard.service }}.service
    - source: salt://{{ tplroot }}/files/distmon-dashboard.service.jinja
    - template: jinja
    - context:
        user: {{ owner | json }}
        app_dir: {{ app_dir | json }}
        venv: {{ venv | json }}
        bind: {{ dashboard.bind | json }}
        port: {{ dashboard.port | int }}
        env_file: {{ env_file | json }}
        limit_nofile: {{ dashboard.limit_nofile | int }}
    - mode: '0644'

distmon-dashboard-service:
  service.running:
    - name: {{ dashboard.service }}
    - enable: True
    - watch:
      - file: distmon-dashboard-unit
      - file: distmon-dashboard-env
      - file: distmon-dashboard-code
      - virtualenv: distmon-dashboard-venv
    - require:
      - file: distmon-inbox
      - file: distmon-db-dir
{%-   endif %}
{%- endif %}
