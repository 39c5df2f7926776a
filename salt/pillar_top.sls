# distmon local stack: pillar top. Rendered by tools/stack.py into .run/pillar/top.sls.
base:
  '*':
    - distmon
