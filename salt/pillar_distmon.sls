# distmon local stack: the formula's pillar for the stack's minions, so that
# `salt '*' state.apply distmon` (and distmon.clean) work from the repo root and write
# nothing outside .run/. Rendered by tools/stack.py into .run/pillar/distmon.sls.
# The SFTP key and known_hosts are the stack's own (no private_key/host_keys here, so
# the state leaves those files alone). Every key: pillar.example.
distmon:
  host: 127.0.0.1
  port: ${SSH_PORT}
  user: ${SSH_USER}
  key: ${SSH_KEY}
  known_hosts: ${KNOWN_HOSTS}
  remote_inbox: ${REMOTE_INBOX}
  deadline: 30
  tests_dir: ${RUN}/salt/{{ grains['id'] }}/tests
  cron:
    check_script: ${RUN}/bin/distmon-cron
