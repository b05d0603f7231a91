// Where data lives: the OS app-data folder by platform, and LLMS_TRAIN_HOME overriding it.
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { appRoot, databaseFile, dataHome, defaultHome, unpacked } from '../../src-main/core/paths';

describe('paths', () => {
  it('uses each OS app-data folder', () => {
    expect(defaultHome('linux', {}, '/home/u')).toBe('/home/u/.config/LLMs-train');
    expect(defaultHome('linux', { XDG_CONFIG_HOME: '/x/cfg' }, '/home/u')).toBe('/x/cfg/LLMs-train');
    expect(defaultHome('darwin', {}, '/Users/u')).toBe('/Users/u/Library/Application Support/LLMs-train');
    expect(defaultHome('win32', { APPDATA: 'C:\\Users\\u\\AppData\\Roaming' }, 'C:\\Users\\u')).toBe('C:\\Users\\u\\AppData\\Roaming\\LLMs-train');
  });

  it('lets LLMS_TRAIN_HOME override, resolved to an absolute path', () => {
    expect(dataHome({ LLMS_TRAIN_HOME: '/tmp/x' })).toBe('/tmp/x');
    expect(path.isAbsolute(dataHome({ LLMS_TRAIN_HOME: 'rel/dir' }))).toBe(true);
    expect(dataHome({ LLMS_TRAIN_HOME: '  ' })).not.toBe('  ');
    expect(databaseFile('/tmp/x')).toBe(path.join('/tmp/x', 'llms-train.db'));
  });

  it('finds the package root and maps asar paths to the unpacked folder', () => {
    expect(path.basename(appRoot())).toBeTruthy();
    expect(unpacked(`${path.sep}a${path.sep}app.asar${path.sep}native${path.sep}x.node`)).toBe(`${path.sep}a${path.sep}app.asar.unpacked${path.sep}native${path.sep}x.node`);
  });
});
