// Small SVG charts for the tff-edge dashboard: lines with points, and bars.
//
// Hand-written on purpose: the dashboard needs two chart kinds, must work
// offline, and every point is an SVG element carrying its data
// (data-series, data-x, data-y), so a test can read the plotted values from
// the DOM and compare them with metrics.jsonl.
'use strict';

const Charts = (() => {
  const NS = 'http://www.w3.org/2000/svg';
  const W = 640, H = 250;
  const M = {left: 58, right: 14, top: 12, bottom: 36};
  const PALETTE = ['#2f6fb0', '#e07b28', '#2f9e6f', '#c23b3b', '#7a5bb5',
                   '#8c6d31', '#d45fa8', '#5c6f7b', '#b5a31f', '#1fa3b5'];

  function svgEl(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  // Compact labels: 0.8123, 12.5, 3.4k, 2.1M.
  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    const a = Math.abs(v);
    if (a !== 0 && a < 0.001) return v.toExponential(1);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(1) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(1) + 'k';
    if (Number.isInteger(v)) return String(v);
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    return v.toPrecision(3).replace(/\.?0+$/, '');
  }

  // About `count` round-numbered ticks covering [lo, hi].
  function ticks(lo, hi, count, integer) {
    if (!(hi > lo)) { hi = lo + 1; }
    let step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
    for (const f of [1, 2, 5, 10]) {
      if ((hi - lo) / (step * f) <= count) { step *= f; break; }
    }
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
      out.push(Number(t.toPrecision(12)));
    }
    return out;
  }

  function frame(container, spec) {
    container.textContent = '';
    const svg = svgEl('svg', {viewBox: `0 0 ${W} ${H}`, class: 'chart',
                             'data-chart': spec.id, role: 'img',
                             'aria-label': spec.title || spec.id},
                      null);
    container.appendChild(svg);
    return svg;
  }

  function axes(svg, xs, ys, spec) {
    const xInteger = xs.every(Number.isInteger);
    let xlo = Math.min(...xs), xhi = Math.max(...xs);
    if (xlo === xhi) { xlo -= 1; xhi += 1; }
    let ylo = Math.min(...ys), yhi = Math.max(...ys);
    if (spec.yZero) ylo = Math.min(0, ylo);
    if (ylo === yhi) {
      const d = Math.abs(ylo) * 0.1 || 1;
      if (!(spec.yZero && ylo === 0)) ylo -= d;
      yhi += d;
    }
    const pad = (yhi - ylo) * 0.06;
    if (!(spec.yZero && ylo === 0)) ylo -= pad;
    yhi += pad;
    const x = v => M.left + (v - xlo) / (xhi - xlo) * (W - M.left - M.right);
    const y = v => H - M.bottom - (v - ylo) / (yhi - ylo) * (H - M.top - M.bottom);
    const grid = svgEl('g', {class: 'grid'}, svg);
    for (const t of ticks(ylo, yhi, 5, spec.yInteger)) {
      svgEl('line', {x1: M.left, x2: W - M.right, y1: y(t), y2: y(t)}, grid);
      svgEl('text', {x: M.left - 6, y: y(t) + 4, class: 'tick y'}, grid)
          .textContent = fmt(t);
    }
    for (const t of ticks(xlo, xhi, 8, xInteger)) {
      svgEl('line', {x1: x(t), x2: x(t), y1: H - M.bottom, y2: H - M.bottom + 4,
                     class: 'xtick'}, grid);
      svgEl('text', {x: x(t), y: H - M.bottom + 16, class: 'tick x'}, grid)
          .textContent = fmt(t);
    }
    svgEl('line', {x1: M.left, x2: W - M.right, y1: H - M.bottom,
                   y2: H - M.bottom, class: 'axis'}, svg);
    svgEl('line', {x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom,
                   class: 'axis'}, svg);
    if (spec.xLabel) {
      svgEl('text', {x: (M.left + W - M.right) / 2, y: H - 4,
                     class: 'label'}, svg).textContent = spec.xLabel;
    }
    if (spec.yLabel) {
      svgEl('text', {x: 12, y: (M.top + H - M.bottom) / 2, class: 'label',
                     transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})`},
            svg).textContent = spec.yLabel;
    }
    return {x, y};
  }

  function legend(container, names, extra) {
    const box = document.createElement('div');
    box.className = 'legend';
    names.forEach((name, i) => {
      const item = document.createElement('span');
      const swatch = document.createElement('i');
      swatch.className = `swatch c${i % PALETTE.length}`;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      box.appendChild(item);
    });
    for (const text of extra || []) {
      const item = document.createElement('span');
      const swatch = document.createElement('i');
      swatch.className = 'swatch target';
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(text));
      box.appendChild(item);
    }
    container.appendChild(box);
  }

  function empty(container, spec, message) {
    container.textContent = '';
    const p = document.createElement('p');
    p.className = 'empty';
    p.dataset.chart = spec.id;
    p.textContent = message || 'no data yet';
    container.appendChild(p);
  }

  // spec: {id, title, xLabel, yLabel, yZero, hlines: [{y, label}],
  //        series: [{name, points: [[x, y], ...]}]}
  function line(container, spec) {
    const series = spec.series.filter(s => s.points.length);
    if (!series.length) { empty(container, spec, spec.empty); return; }
    const svg = frame(container, spec);
    const xs = series.flatMap(s => s.points.map(p => p[0]));
    const ys = series.flatMap(s => s.points.map(p => p[1]))
        .concat((spec.hlines || []).map(h => h.y));
    const {x, y} = axes(svg, xs, ys, spec);
    for (const h of spec.hlines || []) {
      svgEl('line', {x1: M.left, x2: W - M.right, y1: y(h.y), y2: y(h.y),
                     class: 'hline', 'data-y': h.y}, svg);
      svgEl('text', {x: W - M.right - 4, y: y(h.y) - 5, class: 'hlabel'}, svg)
          .textContent = h.label;
    }
    series.forEach((s, i) => {
      const g = svgEl('g', {class: `series c${i % PALETTE.length}`,
                            'data-series': s.name}, svg);
      if (s.points.length > 1) {
        svgEl('polyline', {points: s.points.map(p => `${x(p[0])},${y(p[1])}`)
                               .join(' '), fill: 'none',
                           stroke: PALETTE[i % PALETTE.length]}, g);
      }
      for (const [px, py] of s.points) {
        const dot = svgEl('circle', {cx: x(px), cy: y(py), r: 3, class: 'pt',
                                     fill: PALETTE[i % PALETTE.length],
                                     'data-series': s.name, 'data-x': px,
                                     'data-y': py}, g);
        svgEl('title', {}, dot).textContent =
            `${s.name}: ${fmt(py)} at ${spec.xLabel || 'x'} ${px}`;
      }
    });
    legend(container, series.map(s => s.name),
           (spec.hlines || []).map(h => h.label));
  }

  // spec: {id, title, xLabel, yLabel, bars: [{x, y, title}]}
  function bars(container, spec) {
    if (!spec.bars.length) { empty(container, spec, spec.empty); return; }
    const svg = frame(container, spec);
    const xs = spec.bars.map(b => b.x);
    const {x, y} = axes(svg, xs.concat([Math.min(...xs) - 0.5,
                                        Math.max(...xs) + 0.5]),
                        spec.bars.map(b => b.y).concat([0]),
                        Object.assign({yZero: true, yInteger: true}, spec));
    const width = Math.max(2, Math.min(28, (x(1) - x(0)) * 0.7));
    for (const b of spec.bars) {
      const rect = svgEl('rect', {x: x(b.x) - width / 2, y: y(b.y), width,
                                  height: Math.max(0, y(0) - y(b.y)),
                                  class: b.y ? 'bar' : 'bar zero',
                                  'data-x': b.x, 'data-y': b.y}, svg);
      svgEl('title', {}, rect).textContent = b.title || `${b.x}: ${b.y}`;
    }
  }

  return {line, bars, fmt, PALETTE};
})();
