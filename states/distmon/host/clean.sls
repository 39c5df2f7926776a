{#-
distmon.host.clean: removes what distmon.host installed: the dashboard service and its
unit (systemd hosts), its code, virtualenv, settings file and admin command (distmon-admin),
the sshd drop-in (then `sshd -t` and a reload), the authorized_keys file and the SFTP account. The packages stay (sshd
serves more than distmon). The database, archive, quarantine, inbox and chroot hold
the fleet's results: they go only with `distmon:clean:data: true`.
Honours `distmon:storage:root` like distmon.host (a scratch root: no account, sshd or service).
-#}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import distmon with context %}
{%- from tplroot ~ "/host/paths.jinja" import storage, dashboard, root, scratch, chroot,
    authorized_keys_file, sshd_config, db_path, env_file, app_dir, venv, admin_command, systemd with context %}
{%- set unit = '/etc/systemd/system/' ~ dashboard.service ~ '.service' %}

{%- if systemd %}

distmon-clean-dashboard-service:
  service.dead:
    - name: {{ dashboard.service }}
    - enable: False

distmon-clean-dashboard-unit:
  file.absent:
    - name: {{ unit }}
    - require:
      - service: distmon-clean-dashboard-service

distmon-clean-systemd-reload:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: distmon-clean-dashboard-unit
{%- endif %}

{%- set removed = [('dashboard-venv', venv), ('dashboard-app', app_dir), ('authorized-keys', authorized_keys_file),
                   ('dashboard-env', env_file), ('admin-command', admin_command)] %}
{%- if distmon.clean.data %}
{%-   do removed.extend([('db-dir', db_path.rsplit('/', 1)[0]), ('archive-dir', root ~ storage.archive_dir),
                         ('quarantine-dir', root ~ storage.quarantine_dir), ('chroot', chroot)]) %}
{%- endif %}
{%- for what, path in removed %}

distmon-clean-{{ what }}:
  file.absent:
    - name: {{ path | json }}
{%-   if systemd %}
    - require:
      - service: distmon-clean-dashboard-service
{%-   endif %}
{%- endfor %}

distmon-clean-sshd-match:
  file.absent:
    - name: {{ sshd_config | json }}

{%- if not scratch %}

distmon-clean-sshd-check:
  cmd.run:
    - name: {{ storage.sshd_bin }} -t
    - onchanges:
      - file: distmon-clean-sshd-match
{%-   if systemd %}

distmon-clean-sshd-reload:
  module.run:
    - service.reload:
      - name: {{ storage.sshd_service }}
    - onchanges:
      - file: distmon-clean-sshd-match
    - require:
      - cmd: distmon-clean-sshd-check
{%-   endif %}
{%-   if storage.manage_user %}

distmon-clean-sftp-user:
  user.absent:
    - name: {{ storage.sftp_user }}
    - require:
      - file: distmon-clean-sshd-match
{%-     if systemd %}
      - service: distmon-clean-dashboard-service
{%-     endif %}
{%-   endif %}
{%- endif %}
