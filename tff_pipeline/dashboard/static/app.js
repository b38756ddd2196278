// The tff-edge dashboard's pages, drawn from the JSON API and kept current
// by polling it (every data-poll ms). No framework, no CDN: the machines
// are offline. Text from runs and nodes goes into the DOM as text nodes
// only (never innerHTML), so a run name or an error message cannot inject
// markup.
'use strict';

(() => {
  const body = document.body;
  const POLL = Number(body.dataset.poll) || 2000;
  const main = document.getElementById('main');
  const conn = document.getElementById('conn');
  const METRIC_LABELS = {accuracy: 'accuracy', loss: 'loss', rmse: 'RMSE',
                         recall_at_5: 'recall@5'};
  const STATE_LABELS = {live: 'live', finished: 'finished', stopped: 'stopped',
                        up: 'up', down: 'down', degraded: 'degraded',
                        idle: 'idle'};

  // h('div', {class: 'x', dataset: {run: 'a'}}, 'text', child, ...)
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k === 'on') {
        for (const [event, fn] of Object.entries(v)) node.addEventListener(event, fn);
      } else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(child instanceof Node ? child
                                             : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = v => Charts.fmt(v);
  const runUrl = name => '/runs/' + name.split('/').map(encodeURIComponent).join('/');
  const apiRunUrl = name => '/api/runs/' + name.split('/').map(encodeURIComponent).join('/');

  function ago(seconds) {
    if (!seconds) return '–';
    const d = Date.now() / 1000 - seconds;
    if (d < 90) return `${Math.max(0, Math.round(d))} s ago`;
    if (d < 5400) return `${Math.round(d / 60)} min ago`;
    if (d < 36 * 3600) return `${Math.round(d / 3600)} h ago`;
    return new Date(seconds * 1000).toISOString().slice(0, 16).replace('T', ' ');
  }

  function duration(s) {
    if (s === null || s === undefined) return '–';
    if (s < 120) return `${fmt(s)} s`;
    if (s < 7200) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function badge(state) {
    return h('span', {class: `badge ${state}`, dataset: {state}},
             STATE_LABELS[state] || state);
  }

  function problems(list, id) {
    if (!list || !list.length) return null;
    return h('ul', {class: 'problems', id}, list.map(p => h('li', {}, p)));
  }

  // replaceChildren without the null/false placeholders of optional parts.
  function fill(parent, ...children) {
    parent.replaceChildren(...children.flat(Infinity).filter(
        c => c !== null && c !== undefined && c !== false));
  }

  function setConn(ok, text) {
    conn.className = ok ? 'conn ok' : 'conn bad';
    conn.textContent = text;
  }

  async function getJSON(url) {
    let response;
    try {
      response = await fetch(url, {cache: 'no-cache', credentials: 'same-origin'});
    } catch (e) {
      throw new Error('the dashboard server does not answer');
    }
    const data = await response.json().catch(() => null);
    if (!response.ok && !(data && data.problem)) {
      throw new Error(`${url}: HTTP ${response.status}`);
    }
    return data;
  }

  // Calls `tick` now and every POLL ms; its failures show in the header.
  function poll(tick) {
    const step = async () => {
      try {
        await tick();
        setConn(true, `updated ${new Date().toLocaleTimeString()}`);
      } catch (e) {
        setConn(false, `${e.message}; retrying`);
      }
      setTimeout(step, POLL);
    };
    step();
  }

  function primaryMetric(values) {
    if (!values) return null;
    for (const name of ['rmse', 'accuracy', 'recall_at_5', 'loss']) {
      if (name in values) return name;
    }
    return null;
  }

  function card(title, id, ...children) {
    return h('section', {class: 'card', id}, h('h2', {}, title), ...children);
  }

  // ----------------------------------------------------------------- runs

  const selected = new Set();

  function runsPage() {
    let last = '';
    poll(async () => {
      const data = await getJSON('/api/runs');
      const text = JSON.stringify(data);
      if (text === last) { refreshAges(); return; }
      last = text;
      drawRuns(data);
    });
  }

  function refreshAges() {
    for (const cell of document.querySelectorAll('[data-updated]')) {
      cell.textContent = ago(Number(cell.dataset.updated));
    }
  }

  function drawRuns(data) {
    const live = data.runs.filter(r => r.state === 'live').length;
    const compare = h('a', {class: 'button', id: 'compare-link',
                            href: '/compare'}, 'Compare selected');
    const updateCompare = () => {
      const query = [...selected].map(n => 'run=' + encodeURIComponent(n)).join('&');
      compare.setAttribute('href', '/compare' + (query ? '?' + query : ''));
      compare.classList.toggle('disabled', selected.size < 1);
    };
    const rows = data.runs.map(r => {
      const metric = r.metric;
      const box = h('input', {type: 'checkbox', checked: selected.has(r.name),
                              'aria-label': `compare ${r.name}`,
                              on: {change: e => {
                                if (e.target.checked) selected.add(r.name);
                                else selected.delete(r.name);
                                updateCompare();
                              }}});
      const evalText = metric
          ? `${METRIC_LABELS[metric] || metric} ${fmt(r.eval[metric])}` +
            (r.eval_round ? ` @ ${r.eval_round}` : '')
          : '–';
      const eps = r.epsilon !== null && r.epsilon !== undefined
          ? `ε ${fmt(r.epsilon)}` + (r.target_epsilon ? ` / ${fmt(r.target_epsilon)}` : '')
          : '';
      return h('tr', {dataset: {run: r.name, state: r.state}, class: r.state},
        h('td', {}, box),
        h('td', {}, h('a', {href: runUrl(r.name), class: 'run-link'}, r.name)),
        h('td', {}, badge(r.state)),
        h('td', {}, [r.task, r.model].filter(Boolean).join(' / ') || '–'),
        h('td', {}, [r.algorithm, r.aggregator].filter(Boolean).join(' + ') || '–'),
        h('td', {}, r.executor || '–'),
        h('td', {class: 'num', dataset: {round: r.round ?? ''}},
          `${r.round ?? 0} / ${r.rounds ?? '?'}`),
        h('td', {class: 'num'}, evalText),
        h('td', {class: 'num'}, eps),
        h('td', {class: 'num'}, r.mean_round_seconds ? `${fmt(r.mean_round_seconds)} s` : '–'),
        h('td', {dataset: {updated: r.updated}}, ago(r.updated)),
        h('td', {class: r.problems.length ? 'warn' : ''},
          r.problems.length ? h('details', {}, h('summary', {}, `${r.problems.length} problem(s)`),
                                problems(r.problems)) : ''));
    });
    const table = data.runs.length
        ? h('table', {class: 'runs', id: 'runs'},
            h('thead', {}, h('tr', {}, ['', 'run', 'state', 'task / model',
              'algorithm', 'executor', 'round', 'held-out', 'privacy',
              's/round', 'updated', ''].map(t => h('th', {}, t)))),
            h('tbody', {}, rows))
        : (data.problem ? null
           : h('p', {class: 'empty', id: 'no-runs'},
               `No runs under ${data.root} yet. Train with ` +
               `--output_dir=${data.root}/<name> and it shows up here.`));
    fill(main, 
      h('h1', {}, 'Runs'),
      h('p', {class: 'sub'}, `${data.runs.length} run(s) in ${data.root}` +
        (live ? `, ${live} live` : '')),
      data.problem ? h('p', {class: 'problem', id: 'runs-problem'}, data.problem) : null,
      table,
      data.runs.length ? h('p', {}, compare) : null);
    updateCompare();
  }

  // ------------------------------------------------------------------ run

  function series(rows, pick) {
    const points = [];
    for (const r of rows) {
      const v = pick(r);
      if (typeof v === 'number' && Number.isFinite(v)) points.push([r.round, v]);
    }
    return points;
  }

  function runPage() {
    const name = body.dataset.run;
    let version = null;
    const view = {};
    poll(async () => {
      const data = await getJSON(apiRunUrl(name));
      if (data.problem && !data.rows) {
        fill(main, h('h1', {}, name),
                             h('p', {class: 'problem', id: 'run-problem'}, data.problem));
        version = null;
        return;
      }
      const key = `${data.version}|${data.state}`;
      if (key === version) return;
      version = key;
      drawRun(data, view);
    });
  }

  function drawRun(run, view) {
    const config = run.config || {};
    const rows = run.rows;
    const last = rows.length ? rows[rows.length - 1] : null;
    const summary = run.summary;
    document.title = `${run.name} · tff-edge dashboard`;

    const head = h('div', {class: 'runhead'},
      h('h1', {}, run.name), badge(run.state),
      h('span', {class: 'counter'}, 'round ',
        h('b', {id: 'round', dataset: {round: last ? last.round : 0}},
          last ? last.round : 0),
        ` / ${config.rounds ?? '?'}`));

    const facts = h('p', {class: 'sub'}, [
      [config.task, config.model].filter(Boolean).join(' / '),
      config.algorithm && `${config.algorithm} (${config.aggregator || 'mean'} aggregation)`,
      config.num_clients !== undefined && `${config.num_clients || 'all'} clients, ` +
        `${config.clients_per_round} per round (${config.client_sampling || 'uniform'})`,
      config.executor && `executor ${config.executor}`,
      run.private && 'DP run: client ids are not shown',
    ].filter(Boolean).join(' · '));

    const configTable = h('details', {class: 'config'},
      h('summary', {}, 'config'),
      h('table', {class: 'kv'}, Object.entries(config).map(([k, v]) =>
        h('tr', {}, h('th', {}, k), h('td', {}, JSON.stringify(v))))));

    let results = null;
    if (summary) {
      const fe = summary.final_eval || {};
      results = card('Final results', 'results', h('table', {class: 'kv'},
        Object.entries(fe).map(([k, v]) =>
          h('tr', {}, h('th', {}, `held-out ${METRIC_LABELS[k] || k}`), h('td', {}, fmt(v)))),
        h('tr', {}, h('th', {}, 'after round'), h('td', {}, summary.final_round)),
        h('tr', {}, h('th', {}, 'wall time'), h('td', {}, duration(summary.wall_seconds))),
        h('tr', {}, h('th', {}, 'mean round'), h('td', {}, duration(summary.mean_round_seconds))),
        summary.privacy ? h('tr', {}, h('th', {}, 'privacy'),
          h('td', {}, `(${fmt(summary.privacy.epsilon)}, ${summary.privacy.delta})-DP`)) : null));
    }

    // Task metrics: one chart per metric, train (clients) and eval (held-out).
    const metricCards = run.metrics.map(m => {
      const box = h('div', {class: 'plot'});
      Charts.line(box, {id: `metric-${m}`, title: METRIC_LABELS[m] || m,
        xLabel: 'round', yLabel: METRIC_LABELS[m] || m, series: [
          {name: 'train (clients)', points: series(rows, r => (r.train || {})[m])},
          {name: 'eval (held-out)', points: series(rows, r => (r.eval || {})[m])}]});
      return card(METRIC_LABELS[m] || m, `card-metric-${m}`, box);
    });

    // Privacy.
    const epsBox = h('div', {class: 'plot'});
    const target = config.target_epsilon || 0;
    const hasPrivacy = rows.some(r => r.privacy);
    if (hasPrivacy) {
      Charts.line(epsBox, {id: 'epsilon', xLabel: 'round', yLabel: 'ε spent',
        yZero: true,
        hlines: target > 0 ? [{y: target, label: `target ε = ${fmt(target)}`}] : [],
        series: [{name: `ε spent (δ = ${(last.privacy || {}).delta})`,
                  points: series(rows, r => (r.privacy || {}).epsilon)}]});
    } else {
      epsBox.appendChild(h('p', {class: 'empty', dataset: {chart: 'epsilon'}},
        `Not a DP run (aggregator ${config.aggregator || 'mean'}): no privacy budget is spent.`));
    }

    // Seconds per round and per pod.
    const secBox = h('div', {class: 'plot'});
    Charts.line(secBox, {id: 'round-seconds', xLabel: 'round', yLabel: 'seconds',
      yZero: true, series: [
        {name: 'round', points: series(rows, r => r.round_seconds)},
        {name: 'evaluation', points: series(rows, r => r.eval_seconds)}]});
    const pods = [...new Set(rows.flatMap(r => Object.keys(r.pod_seconds || {})))].sort(
        (a, b) => a.localeCompare(b, undefined, {numeric: true}));
    const podBox = h('div', {class: 'plot'});
    Charts.line(podBox, {id: 'pod-seconds', xLabel: 'round', yLabel: 'seconds',
      yZero: true, empty: 'No per-pod times: only --executor=remote runs have pod_seconds.',
      series: pods.map(p => ({name: p, points: series(rows, r => (r.pod_seconds || {})[p])}))});

    // Failures per round.
    const failBox = h('div', {class: 'plot'});
    const remote = rows.some(r => 'failures' in r);
    Charts.bars(failBox, {id: 'failures', xLabel: 'round', yLabel: 'failures',
      empty: 'No failures recorded: only --executor=remote runs can lose a pod.',
      bars: remote ? rows.map(r => ({x: r.round, y: (r.failures || []).length,
        title: `round ${r.round}: ` + ((r.failures || []).map(f =>
          `${f.pod || f.edge_server} ${f.kind}`).join(', ') || 'no failure')})) : []});
    const recent = rows.flatMap(r => (r.failures || []).map(f => [r.round, f])).slice(-8).reverse();
    const failList = recent.length ? h('table', {class: 'failures', id: 'failure-list'},
      h('thead', {}, h('tr', {}, ['round', 'node', 'kind', 'clients', 'error'].map(t => h('th', {}, t)))),
      h('tbody', {}, recent.map(([round, f]) => h('tr', {},
        h('td', {}, round), h('td', {}, f.pod || f.edge_server), h('td', {}, f.kind),
        h('td', {}, Array.isArray(f.clients) ? f.clients.join(', ')
                                             : (f.clients_count ?? '–')),
        h('td', {class: 'err'}, String(f.error || '').slice(0, 160)))))) : null;

    // Bytes per tier.
    const byteBox = h('div', {class: 'plot'});
    const net = (r, k) => r.network ? r.network[k] / 1e6 : undefined;
    Charts.line(byteBox, {id: 'bytes', xLabel: 'round', yLabel: 'MB per round',
      yZero: true, empty: 'No byte counts: only --executor=remote runs have network.',
      series: [
        {name: 'coordinator → edge servers', points: series(rows, r => net(r, 'coordinator_bytes_sent'))},
        {name: 'edge servers → coordinator', points: series(rows, r => net(r, 'coordinator_bytes_received'))},
        {name: 'edge servers → pods', points: series(rows, r => net(r, 'edge_server_bytes_sent'))},
        {name: 'pods → edge servers', points: series(rows, r => net(r, 'edge_server_bytes_received'))}]});

    // The last round in words.
    let lastText = 'No round finished yet.';
    if (last) {
      const sampled = last.clients_count ?? 0;
      const ids = Array.isArray(last.clients) ? `: ${last.clients.slice(0, 20).join(', ')}` +
        (last.clients.length > 20 ? ', …' : '') : (run.private ? ' (ids not shown: DP run)' : '');
      lastText = `Round ${last.round}: ${sampled} client(s) sampled${ids}; ` +
        `${duration(last.round_seconds)}` +
        (last.participants_count !== undefined ? `; ${last.participants_count} in the secure sum` : '') +
        (last.failures && last.failures.length ? `; ${last.failures.length} failure(s)` : '') + '.';
    }

    // Keep what the reader opened across updates.
    const wasOpen = (main.querySelector('details.config') || {}).open;
    if (wasOpen) configTable.open = true;
    fill(main, 
      head, facts,
      problems(run.problems, 'problems'),
      h('p', {id: 'last-round'}, lastText),
      configTable,
      h('p', {}, h('a', {href: `/compare?run=${encodeURIComponent(run.name)}`},
                   'compare with other runs →')),
      h('div', {class: 'grid'},
        results,
        metricCards,
        card('Privacy: ε spent', 'card-epsilon', epsBox),
        card('Seconds per round', 'card-round-seconds', secBox),
        card('Seconds per pod', 'card-pod-seconds', podBox),
        card('Failures per round', 'card-failures', failBox, failList),
        card('Bytes per tier', 'card-bytes', byteBox)));
  }

  // -------------------------------------------------------------- compare

  const COMPARE_METRICS = {
    'eval accuracy': r => (r.eval || {}).accuracy,
    'eval loss': r => (r.eval || {}).loss,
    'eval RMSE': r => (r.eval || {}).rmse,
    'eval recall@5': r => (r.eval || {}).recall_at_5,
    'train loss': r => (r.train || {}).loss,
    'train accuracy': r => (r.train || {}).accuracy,
    'ε spent': r => (r.privacy || {}).epsilon,
    'seconds per round': r => r.round_seconds,
  };

  function comparePage() {
    const params = new URLSearchParams(location.search);
    const chosen = new Set(params.getAll('run'));
    let metric = params.get('metric') || 'eval accuracy';
    const cache = {};
    const picker = h('select', {id: 'metric', on: {change: e => {
      metric = e.target.value; redraw(); }}},
      Object.keys(COMPARE_METRICS).map(m => h('option', {value: m, selected: m === metric}, m)));
    const list = h('div', {class: 'picker', id: 'run-picker'});
    const plot = h('div', {class: 'plot'});
    const note = h('p', {class: 'sub'});
    fill(main, h('h1', {}, 'Compare runs'),
      h('p', {}, 'metric ', picker), list, card('Runs on one chart', 'card-compare', plot, note));

    function redraw() {
      const names = [...chosen].filter(n => cache[n]);
      const pick = COMPARE_METRICS[metric];
      Charts.line(plot, {id: 'compare', xLabel: 'round', yLabel: metric,
        empty: chosen.size ? `No ${metric} in the chosen runs yet.` : 'Tick runs above.',
        series: names.map(n => ({name: n, points: series(cache[n].rows, pick)}))});
      const url = new URL(location.href);
      url.search = new URLSearchParams([...[...chosen].map(n => ['run', n]),
                                        ['metric', metric]]).toString();
      history.replaceState(null, '', url);
      note.textContent = names.map(n => `${n}: ${cache[n].state}`).join(' · ');
    }

    let lastList = '';
    poll(async () => {
      const data = await getJSON('/api/runs');
      const names = data.runs.map(r => r.name);
      if (names.join('\n') !== lastList) {
        lastList = names.join('\n');
        fill(list, data.problem ? h('p', {class: 'problem'}, data.problem) : null,
          ...data.runs.map(r => h('label', {class: 'pick'},
            h('input', {type: 'checkbox', checked: chosen.has(r.name), dataset: {run: r.name},
                        on: {change: e => {
                          if (e.target.checked) chosen.add(r.name); else chosen.delete(r.name);
                          redraw(); }}}),
            ` ${r.name} `, badge(r.state))));
      }
      const wanted = [...chosen].filter(n => names.includes(n));
      const fetched = await Promise.all(wanted.map(n => getJSON(apiRunUrl(n))));
      wanted.forEach((n, i) => { if (fetched[i] && fetched[i].rows) cache[n] = fetched[i]; });
      redraw();
    });
  }

  // ----------------------------------------------------------- federation

  function nodeCard(node, extra) {
    const id = node.identity;
    const facts = [];
    if (node.role === 'coordinator') {
      if (node.run) facts.push(['run', `${node.run} (${node.run_state})`]);
      if (node.round !== undefined) facts.push(['round', `${node.round} / ${node.rounds ?? '?'}`]);
      if (node.sampled !== undefined && node.sampled !== null) facts.push(['sampled', `${node.sampled} clients`]);
    } else {
      facts.push(['address', node.address]);
    }
    facts.push(['clients', node.clients ?? '–']);
    facts.push(['last round', node.last_seconds !== undefined
      ? `${fmt(node.last_seconds)} s` + (node.role === 'edge_server' ? ' (slowest pod)' : '')
        + (node.last_seconds_round !== undefined ? ` (round ${node.last_seconds_round})` : '')
      : '–']);
    facts.push(['failures', node.failures !== undefined
      ? `${node.failures}` + (node.last_failure
        ? ` (last: round ${node.last_failure.round}, ${node.last_failure.kind})` : '')
      : '–']);
    if (node.restarts) facts.push(['restarts', node.restarts]);
    facts.push(['TLS', id ? `${id.subject} · by ${id.issuer} · until ${id.not_after}` +
                            (id.expired ? ' (EXPIRED)' : '')
                          : (extra.tls ? 'not seen' : 'plaintext (no tls_dir)')]);
    if (id) facts.push(['sha256', id.sha256.slice(0, 16) + '…']);
    return h('div', {class: `node ${node.state} ${node.role}`,
                     dataset: {node: node.name, state: node.state, role: node.role}},
      h('div', {class: 'nodehead'}, h('b', {}, node.name), badge(node.state)),
      h('dl', {}, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {dataset: {fact: k}}, v)])),
      problems(node.problems));
  }

  function federationPage() {
    const params = new URLSearchParams(location.search);
    const run = params.get('run');
    let last = '';
    const wire = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    wire.setAttribute('class', 'wires');
    poll(async () => {
      const data = await getJSON('/api/federation' + (run ? `?run=${encodeURIComponent(run)}` : ''));
      const text = JSON.stringify(Object.assign({}, data, {checked_at: 0}));
      if (text === last) return;
      last = text;
      drawFederation(data, wire);
    });
    window.addEventListener('resize', () => drawWires(wire));
  }

  function drawFederation(data, wire) {
    const servers = data.edge_servers || [];
    const allPods = servers.flatMap(s => s.pods);
    const count = state => allPods.concat(servers).filter(n => n.state === state).length;
    const tree = h('div', {class: 'tree', id: 'tree'},
      h('div', {class: 'tier coordinator-tier'}, nodeCard(data.coordinator, data)),
      h('div', {class: 'tier servers'}, servers.map(s =>
        h('div', {class: 'branch', dataset: {server: s.name}},
          nodeCard(s, data),
          h('div', {class: 'pods'}, s.pods.map(p => nodeCard(p, data)))))));
    fill(main, 
      h('h1', {}, 'Federation'),
      h('p', {class: 'sub'}, data.topology ? `topology ${data.topology}` : '',
        servers.length ? ` · ${servers.length} edge server(s), ${allPods.length} pod(s): ` +
          `${count('up')} up, ${count('degraded')} degraded, ${count('down')} down` : '',
        data.tls ? ` · checked over mutual TLS as ${data.tls_name}` : ' · plaintext (no tls_dir)'),
      data.problem ? h('p', {class: 'problem', id: 'federation-problem'}, data.problem) : null,
      data.tls_problem ? h('p', {class: 'problem', id: 'tls-problem'}, data.tls_problem) : null,
      h('div', {class: 'drawing'}, wire, tree),
      h('p', {class: 'legend states'}, ['up', 'degraded', 'down', 'idle'].map(s => badge(s)),
        ' a pod is up when its health port, its executor and (with TLS) its mutual-TLS ' +
        'control route all answer; down when it does not answer at all.'));
    requestAnimationFrame(() => drawWires(wire));
  }

  // Lines from the coordinator to each edge server and from each to its pods.
  function drawWires(wire) {
    const drawing = wire.parentElement;
    if (!drawing) return;
    const box = drawing.getBoundingClientRect();
    wire.setAttribute('width', box.width);
    wire.setAttribute('height', box.height);
    wire.replaceChildren();
    const anchor = (el, bottom) => {
      const r = el.getBoundingClientRect();
      return [r.left + r.width / 2 - box.left, (bottom ? r.bottom : r.top) - box.top];
    };
    const line = (from, to, state) => {
      const [x1, y1] = anchor(from, true), [x2, y2] = anchor(to, false);
      const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
      const my = (y1 + y2) / 2;
      path.setAttribute('d', `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`);
      path.setAttribute('class', `wire ${state}`);
      wire.appendChild(path);
    };
    const coordinator = drawing.querySelector('.node.coordinator');
    for (const branch of drawing.querySelectorAll('.branch')) {
      const server = branch.querySelector(':scope > .node');
      if (coordinator) line(coordinator, server, server.dataset.state);
      for (const pod of branch.querySelectorAll('.pods > .node')) {
        line(server, pod, pod.dataset.state);
      }
    }
  }

  const pages = {runs: runsPage, run: runPage, compare: comparePage,
                 federation: federationPage};
  (pages[body.dataset.page] || runsPage)();
})();
