// main.ts — renderer entry: mounts the Svelte app. Nothing here may touch Node or Electron: the page
// reaches the core only through api/client.ts.
import { mount } from 'svelte';

import App from './App.svelte';
import './styles.css';

const target = document.getElementById('app');
if (!target) throw new Error('#app element missing from index.html');
export default mount(App, { target });
