"""The penalty section's table rows (docs/benchmarks.md): penalty runs beside the same day's plain,
feedback and votes runs."""
import json, sys, numpy as np
CUE=[0,1,2,3,4,6,8]
def load(p):
    d=json.load(open(p)); rs=d['rounds']
    acc=[r['accuracy'] for r in rs]; n=[r['labeled'] for r in rs]
    r=[x for x in rs if x['labeled']==300][0]
    pc=list(r['per_class'].values())
    cue=np.mean([pc[i]['accuracy'] for i in CUE]); foot=np.mean([pc[i]['accuracy'] for i in range(10) if i not in CUE])
    return dict(t=r['accuracy'], v=r['val_accuracy'], a=np.trapezoid(acc,n)/(n[-1]-n[0]), pen=[x.get('penalty_images') for x in rs],
                sw=[len((x.get('swap_test') or {}).get('suspect',[])) for x in rs], cue=cue, foot=foot,
                fl=sum(((x.get('expert_votes') or {}).get('flagged') or 0) for x in rs), sec=d['config'].get('seconds'))
A='bench/results/shortcut/cam-term/'  # run from the repository's root
for kind, pat in (('trained','bench/results/shortcut/penalty/penalty-w1_seed{}.json'),('pixels','bench/results/shortcut/penalty/penalty-w1-px_seed{}.json')):
    rows=[]
    for s in (0,1,2):
        try: p=load(pat.format(s))
        except FileNotFoundError: continue
        pl=load(A+f'plain_seed{s}.json'); fb=load(A+f'feedback-k4-shuffle_seed{s}.json')
        vo=load(f'bench/results/shortcut/bare/votes_seed{s}.json')
        rows.append((s,p,pl,fb,vo))
        print(f"| {s} | {kind} | {pl['t']:.4f} | {vo['t']:.4f} | {fb['t']:.4f} | **{p['t']:.4f}** | **{100*(p['t']-pl['t']):+.1f}** | {100*(p['t']-vo['t']):+.1f} | {pl['v']:.3f} / {p['v']:.3f} | {pl['a']:.4f} / {fb['a']:.4f} / {p['a']:.4f} | {pl['cue']:.3f} / {p['cue']:.3f} | {', '.join(map(str,p['pen']))} | {' '.join(map(str,pl['sw']))} / {' '.join(map(str,p['sw']))} | {p['sec']:.0f} |")
    if rows:
        m=lambda k,i: np.mean([r[i][k] for r in rows])
        print(kind, 'means: plain', round(m('t',2),4), 'votes', round(m('t',4),4), 'fb', round(m('t',3),4), 'pen', round(m('t',1),4), 'pen-plain', round(100*(m('t',1)-m('t',2)),2), 'pen-votes', round(100*(m('t',1)-m('t',4)),2), 'aulc pl/fb/pen', round(m('a',2),4), round(m('a',3),4), round(m('a',1),4), 'val', round(m('v',2),3), round(m('v',1),3), 'cue', round(m('cue',2),3), round(m('cue',1),3), 'plain sec', [round(r[2]['sec']) for r in rows])
