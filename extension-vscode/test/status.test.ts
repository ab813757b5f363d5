import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StatusModel, deviceFrom } from '../src/status';

describe('status bar', () => {
  test('starting, then ready', () => {
    const status = new StatusModel();
    let changes = 0;
    status.onChange(() => changes++);
    status.setPhase('starting');
    assert.match(status.render().text, /loading~spin/);
    status.setPhase('ready');
    assert.equal(status.render().text, '$(beaker) NExT');
    assert.equal(status.render().severity, 'normal');
    assert.equal(changes, 2);
  });

  test('busy with the progress title, percentage and message; back to ready at the end', () => {
    const status = new StatusModel();
    status.setPhase('ready');
    status.progress('t1', { kind: 'begin', title: 'Fixing remove_Occ', percentage: 0 });
    assert.equal(status.render().text, '$(sync~spin) NExT: Fixing remove_Occ 0%');
    status.progress('t1', { kind: 'report', message: 'sample 2/4', percentage: 50 });
    assert.equal(status.render().text, '$(sync~spin) NExT: Fixing remove_Occ 50% - sample 2/4');
    assert.equal(status.render().severity, 'busy');
    status.progress('t2', { kind: 'begin', title: 'Running tests' });
    assert.match(status.render().text, /Running tests \(\+1\)$/);
    assert.match(status.render().tooltip, /Busy: Fixing remove_Occ 50% - sample 2\/4/);
    status.progress('t2', { kind: 'end' });
    status.progress('t1', { kind: 'end', message: 'verified 1 fix' });
    assert.equal(status.busy, false);
    assert.equal(status.render().text, '$(beaker) NExT');
  });

  test('the model device from a progress message', () => {
    const status = new StatusModel();
    status.setPhase('ready');
    status.progress(1, { kind: 'begin', title: 'Loading the model' });
    status.progress(1, { kind: 'end', message: 'SmolLM2-135M on GPU' });
    assert.equal(status.render().text, '$(beaker) NExT GPU');
    status.setModel('smollm2.gguf', 'CPU (scripted answers)');
    assert.equal(status.render().text, '$(beaker) NExT CPU');
    assert.match(status.render().tooltip, /Model: smollm2.gguf on CPU \(scripted answers\)/);
    status.setModel(undefined, 'GPU (CUDA), 31/31 layers offloaded');
    assert.equal(status.render().text, '$(beaker) NExT GPU');
  });

  test('deviceFrom', () => {
    assert.equal(deviceFrom('model on GPU'), 'GPU');
    assert.equal(deviceFrom('loaded x.gguf on the CPU'), 'CPU');
    assert.equal(deviceFrom('device: cuda'), 'GPU');
    assert.equal(deviceFrom('running tests'), undefined);
  });

  test('the last error is shown until cleared, and a failed start is an error state', () => {
    const status = new StatusModel();
    status.setPhase('ready');
    status.error('fix failed: timeout');
    assert.equal(status.render().text, '$(warning) NExT');
    assert.equal(status.render().severity, 'error');
    assert.match(status.render().tooltip, /Last error: fix failed: timeout/);
    status.clearError();
    assert.equal(status.render().severity, 'normal');
    status.setPhase('error', 'nextls is not installed');
    assert.equal(status.render().text, '$(error) NExT');
    assert.match(status.render().tooltip, /nextls is not installed/);
  });

  test('a server title that starts with "NExT:" is not repeated after the item\'s own "NExT:"', () => {
    const status = new StatusModel();
    status.setPhase('ready');
    status.progress('t', { kind: 'begin', title: 'NExT: fixing remove_Occ', message: 'search' });
    assert.equal(status.render().text, '$(sync~spin) NExT: fixing remove_Occ - search');
  });

  test('installing: its own text, busy; the device found by a GPU rebuild stays after the restart', () => {
    const status = new StatusModel();
    status.setPhase('installing');
    assert.equal(status.render().text, '$(cloud-download) NExT: installing');
    assert.equal(status.render().severity, 'busy');
    status.setModel(undefined, 'GPU (CUDA build of llama-cpp-python; nextls.gpuLayers decides how many layers)');
    status.setPhase('starting');
    status.setPhase('ready');
    assert.equal(status.render().text, '$(beaker) NExT GPU');
    assert.match(status.render().tooltip, /CUDA build of llama-cpp-python/);
  });
});
