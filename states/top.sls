base:
  'roles:distmon-host':
    - match: grain
    - distmon.host
  'roles:distmon-minion':
    - match: grain
    - distmon.minion
