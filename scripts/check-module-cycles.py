#!/usr/bin/env python3
"""Module import cycles of a crate: each top-level module (file plus folder) -> the crate::X
modules it uses, comments and #[cfg(test)] mod tests ignored. Usage: scripts/check-module-cycles.py host/src"""
import re,sys,pathlib
src=pathlib.Path(sys.argv[1]); g={}
for f in src.rglob('*.rs'):
    top=f.relative_to(src).parts[0].removesuffix('.rs')
    if top in('lib','main'): continue
    code=re.sub(r'(?s)#\[cfg\(test\)\]\s*mod tests.*','',re.sub(r'//[^\n]*','',f.read_text()))
    g.setdefault(top,set()).update(n for n in re.findall(r'\bcrate::(\w+)',code)
        if n!=top and ((src/f'{n}.rs').exists() or (src/n).is_dir()))
def reach(m,s):
    for n in g.get(m,()):
        if n not in s: s.add(n); reach(n,s)
    return s
print(sys.argv[1], 'cycles through:',[m for m in g if m in reach(m,set())] or 'none')
