# distmon top file: `salt '*' state.highstate` gives every machine its distmon role.
# A role comes from a grain (`roles: [distmon-minion]`, e.g. in /etc/salt/grains) or
# from pillar (`distmon: {roles: [distmon-minion]}`); see pillar.example.
base:
  'G@roles:distmon-minion or I@distmon:roles:distmon-minion':
    - match: compound
    - distmon.minion
  'G@roles:distmon-host or I@distmon:roles:distmon-host':
    - match: compound
    - distmon.host
